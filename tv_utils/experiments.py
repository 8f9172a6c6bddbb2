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
from tqdm.auto import tqdm

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


def _queries(model: Model, episodes, fmt: PromptFormat) -> list[list[int]]:
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


def prepare_split(model: Model, task: Task | str, split: str, n: int, protocol: Protocol = PAPER,
                  fmt: PromptFormat = DEFAULT_FORMAT) -> Split:
    """Sample a split's episodes (pairs the tokenizer can score) and run them once through the engine."""
    task = get_task(task) if isinstance(task, str) else task
    usable, answer_ids = usable_task(task, model.tokenizer, fmt)
    episodes = sample_episodes(usable, n, protocol.k, protocol.n_dummies, split, protocol.seed)
    theta, icl_pred = engine.episode_states(model, episodes, fmt)
    return Split(usable, episodes, _targets(episodes, answer_ids, model.device), theta, icl_pred,
                 _queries(model, episodes, fmt))


def accuracy(model: Model, predicted: torch.Tensor, target: torch.Tensor, dim=None):
    """Share of predictions matching their targets (see `prompts.hits`); per column when dim=0."""
    correct = hits(model.tokenizer, predicted, target).float()
    return correct.mean().item() if dim is None else correct.mean(dim).tolist()


def best_of(layers, accuracy) -> int:
    """The first layer with the top accuracy."""
    return layers[max(range(len(layers)), key=lambda i: accuracy[i])]


def evaluate_task(model: Model, task: Task | str, protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT,
                  layers=None) -> tuple[dict, pd.DataFrame]:
    """One task under the protocol: a summary row and a per-layer dev-accuracy table."""
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    dev = prepare_split(model, task, "dev", protocol.n_dev, protocol, fmt)
    dev_acc = accuracy(model, engine.layer_sweep(model, dev.queries, dev.theta, layers), dev.target[:, None], dim=0)
    best = best_of(layers, dev_acc)

    test = prepare_split(model, task, "test", protocol.n_test, protocol, fmt)
    tv_pred = engine.layer_sweep(model, test.queries, test.theta, [best])[:, 0]
    base_pred = engine.next_tokens(model, test.queries)
    task = test.task
    summary = {
        "model": model.name, "task": task.name, "category": task.category, "n_pairs": len(task.pairs),
        "baseline": accuracy(model, base_pred, test.target),
        "icl": accuracy(model, test.icl_pred, test.target),
        "tv": accuracy(model, tv_pred, test.target),
        "best_layer": best, "n_layers": model.n_layers,
    }
    per_layer = pd.DataFrame({
        "model": model.name, "task": task.name, "category": task.category, "layer": layers,
        "rel_depth": [l / model.n_layers for l in layers], "dev_acc": dev_acc,
    })
    return summary, per_layer


def run_tasks(model: Model, task_names=TASK_NAMES, protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT,
              progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """evaluate_task over many tasks (names or Task objects): (results table, per-layer table)."""
    rows, curves = [], []
    bar = tqdm(list(task_names), desc=f"tasks on {model.name}", disable=not progress)
    for task in bar:
        bar.set_postfix_str(getattr(task, "name", task))
        summary, per_layer = evaluate_task(model, task, protocol, fmt)
        rows.append(summary)
        curves.append(per_layer)
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
    records = results.to_dict("records")
    for rec in records:
        rec["dev_acc_by_layer"] = per_layer.loc[per_layer.task == rec["task"], "dev_acc"].round(4).tolist()
    store.save_json({"model": model.name, "model_info": model.info, "protocol": asdict(protocol),
                     "summary": summarize(results).to_dict("records"), "tasks": records}, f"{stem}_results.json")
    if figures:
        store.save_figure(plots.accuracy_bars(results), f"{stem}_accuracy")
        store.save_figure(plots.layer_curves(per_layer), f"{stem}_layers")
    results.attrs["seconds"] = seconds
    return results
