"""The paper's protocol as tidy tables: baseline / ICL / task-vector accuracy per task, and layer sweeps.

Per task: 50 dev episodes pick the layer (first-token accuracy of the patched query at every layer);
50 test episodes report zero-shot baseline, ICL and task-vector accuracy at that layer. Each episode
has 5 demonstrations and theta is the mean over 2 dummy queries, as in the paper.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from . import engine, store
from .models import Model
from .prompts import DEFAULT_FORMAT, PromptFormat, hits, usable_task
from .tasks import TASK_NAMES, Task, get_task, sample_episodes


@dataclass(frozen=True)
class Protocol:
    k: int = 5
    n_dev: int = 50
    n_test: int = 50
    n_dummies: int = 2
    seed: int = 0


PAPER = Protocol()


def _targets(episodes, answer_ids: dict[str, int], device) -> torch.Tensor:
    return torch.tensor([answer_ids[ep.query[1]] for ep in episodes], device=device)


def encode_queries(model: Model, episodes, fmt: PromptFormat) -> list[list[int]]:
    """Token ids of each episode's zero-shot query prompt `x ->`."""
    return model.encode([fmt.query(ep.query[0]) for ep in episodes])


@dataclass
class Split:
    """Episodes of one task and split with their targets, theta at every layer and ICL predictions."""

    task: Task
    episodes: list
    target: torch.Tensor
    theta: torch.Tensor
    icl_pred: torch.Tensor
    queries: list[list[int]]


def sample_split(model: Model, task: Task | str, split: str, n: int, protocol: Protocol, fmt: PromptFormat):
    """A split's episodes over the pairs this tokenizer can score, and their target tokens."""
    task = get_task(task) if isinstance(task, str) else task
    usable, answer_ids = usable_task(task, model.tokenizer, fmt)
    episodes = sample_episodes(usable, n, protocol.k, protocol.n_dummies, split, protocol.seed)
    return usable, episodes, _targets(episodes, answer_ids, model.device)


def prepare_split(model: Model, task: Task | str, split: str, n: int, protocol: Protocol = PAPER,
                  fmt: PromptFormat = DEFAULT_FORMAT, icl: bool = True) -> Split:
    """Sample a split's episodes and run them once through the engine
    (icl=False skips the ICL prompts when only theta is needed)."""
    usable, episodes, target = sample_split(model, task, split, n, protocol, fmt)
    theta, icl_pred = engine.episode_states(model, episodes, fmt, icl=icl)
    return Split(usable, episodes, target, theta, icl_pred, encode_queries(model, episodes, fmt))


def accuracy(model: Model, predicted: torch.Tensor, target: torch.Tensor, dim=None):
    """Share of predictions matching their targets (see `prompts.hits`); per column when dim=0."""
    correct = hits(model.tokenizer, predicted, target).double()  # 7/50 is 0.14, not float32's 0.14000000059
    return correct.mean().item() if dim is None else correct.mean(dim).tolist()


def best_of(layers, accuracy) -> int:
    """The first layer with the top accuracy."""
    return layers[max(range(len(layers)), key=lambda i: accuracy[i])]


def evaluate_task(model: Model, task: Task | str, protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT,
                  layers=None) -> tuple[dict, pd.DataFrame]:
    """One task under the protocol: a summary row and a per-layer dev-accuracy table."""
    results, per_layer = run_tasks(model, [task], protocol, fmt, layers=layers, progress=False)
    return results.iloc[0].drop("tv_over_icl").to_dict(), per_layer


def run_tasks(model: Model, task_names=TASK_NAMES, protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT,
              layers=None, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The protocol on many tasks (names or Task objects): (results table, per-layer dev table).

    All tasks' episodes go through the engine together, so batches stay large even for one task's
    50 queries (a GPU then runs a 7B model at a few forwards per stage instead of a few per task).
    """
    layers = list(range(model.n_layers)) if layers is None else [model.check_layer(l) for l in layers]
    p = protocol
    dev = [sample_split(model, t, "dev", p.n_dev, p, fmt) for t in task_names]
    test = [sample_split(model, t, "test", p.n_test, p, fmt) for t in task_names]
    flat = lambda splits: [ep for _, eps, _ in splits for ep in eps]  # noqa: E731
    say = (lambda text: f"{text} ({len(dev)} tasks, {model.name})") if progress else (lambda text: None)  # noqa: E731

    theta, _ = engine.episode_states(model, flat(dev), fmt, icl=False, progress=say("dev task vectors"))
    sweep = engine.layer_sweep(model, encode_queries(model, flat(dev), fmt), theta, layers,
                               progress=say(f"dev sweep, {len(layers)} layers"))
    theta, icl_pred = engine.episode_states(model, flat(test), fmt, progress=say("test ICL and task vectors"))
    queries = encode_queries(model, flat(test), fmt)
    base_pred = engine.next_tokens(model, queries)

    rows, curves, best, start = [], [], [], 0
    for task, episodes, target in dev:
        dev_acc = accuracy(model, sweep[start:start + len(episodes)], target[:, None], dim=0)
        start += len(episodes)
        best.append(best_of(layers, dev_acc))
        curves.append(pd.DataFrame({
            "model": model.name, "task": task.name, "category": task.category, "layer": layers,
            "rel_depth": [l / model.n_layers for l in layers], "dev_acc": dev_acc}))

    owner = torch.tensor([i for i, (_, eps, _) in enumerate(test) for _ in eps])
    tv_pred = torch.empty(len(queries), dtype=torch.long, device=model.device)
    for layer in sorted(set(best)):
        rows_at = torch.cat([torch.nonzero(owner == i).flatten() for i, b in enumerate(best) if b == layer])
        tv_pred[rows_at] = engine.layer_sweep(model, [queries[i] for i in rows_at], theta[rows_at], [layer])[:, 0]

    for i, (task, _, target) in enumerate(test):
        mine = owner == i
        rows.append({
            "model": model.name, "task": task.name, "category": task.category, "n_pairs": len(task.pairs),
            "baseline": accuracy(model, base_pred[mine], target), "icl": accuracy(model, icl_pred[mine], target),
            "tv": accuracy(model, tv_pred[mine], target), "best_layer": best[i], "n_layers": model.n_layers})
    results = pd.DataFrame(rows)
    results["tv_over_icl"] = results["tv"] / results["icl"].where(results["icl"] > 0)
    return results, pd.concat(curves, ignore_index=True)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Means per category and overall, with the TV/ICL ratio of the means."""
    cols = ["baseline", "icl", "tv"]
    by_cat = results.groupby("category", sort=False)[cols].mean()
    by_cat.loc["all"] = results[cols].mean()
    by_cat["tv_over_icl"] = by_cat["tv"] / by_cat["icl"]
    return by_cat.reset_index()


def reproduce(model: Model, task_names=TASK_NAMES, out_dir: str | Path = "figures", protocol: Protocol = PAPER,
              figures: bool = True, progress: bool = True) -> pd.DataFrame:
    """The main job: all tasks, results as CSV + JSON and the paper's two figures under out_dir."""
    from . import plots

    start = time.perf_counter()
    results, per_layer = run_tasks(model, task_names, protocol, progress=progress)
    seconds = time.perf_counter() - start
    out = Path(out_dir)
    stem = out / f"reproduce_{model.name.replace('/', '_')}"
    store.save_table(results, f"{stem}_results.csv")
    store.save_table(per_layer, f"{stem}_per_layer.csv")
    records = results.round(4).to_dict("records")
    for rec in records:
        rec["dev_acc_by_layer"] = per_layer.loc[per_layer.task == rec["task"], "dev_acc"].round(4).tolist()
    store.save_json({"model": model.name, "dtype": model.info["dtype"], "device": model.info["device"],
                     "versions": store.versions(), "protocol": asdict(protocol),
                     "summary": summarize(results).round(4).to_dict("records"), "tasks": records},
                    f"{stem}_results.json")
    if figures:
        store.save_figure(plots.accuracy_bars(results), f"{stem}_accuracy")
        store.save_figure(plots.layer_curves(per_layer), f"{stem}_layers")
    results.attrs["seconds"] = seconds
    return results
