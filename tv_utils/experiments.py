"""The paper's protocol as tidy tables: baseline / ICL / task-vector accuracy per task, layer sweeps, and the
layer L a model uses when none is given (its best mean dev layer).

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


def best_mean_layer(per_layer: pd.DataFrame) -> int:
    """The layer with the best dev accuracy averaged over the tasks of a per-layer table (the paper's single
    L for a model; per-task layers are `best_of` each task's curve)."""
    mean = per_layer.groupby("layer")["dev_acc"].mean()
    return int(best_of(list(mean.index), mean.tolist()))


def layer_accuracy(model: Model, task, n: int = 50, protocol: Protocol = PAPER, split: str = "dev") -> pd.DataFrame:
    """Task-vector accuracy at every layer on one split (the dev half of `evaluate_task`)."""
    s = prepare_split(model, task, split, n, protocol, icl=False)
    acc = accuracy(model, engine.layer_sweep(model, s.queries, s.theta), s.target[:, None], dim=0)
    layers = list(range(model.n_layers))
    return pd.DataFrame({"model": model.name, "task": s.task.name, "category": s.task.category, "layer": layers,
                         "rel_depth": [l / model.n_layers for l in layers], "dev_acc": acc})


QUICK_EPISODES = 10  # per task, in the quick live runs for a model with no stored results


def quick_tasks(model: Model, n: int = 4, need: int = 2 * QUICK_EPISODES) -> list[str]:
    """Up to n tasks for live fallbacks, one per category first, that this tokenizer can score on `need` pairs."""
    preferred = ("en_fr", "antonyms", "country_capital", "list_first", "next_letter", "to_upper", "list_last",
                 "en_es", "present_simple_past_simple", "location_continent")
    usable = [t for t in preferred if len(usable_task(get_task(t), model.tokenizer)[0].pairs) >= need]
    if not usable:
        raise ValueError(f"{model.name}'s tokenizer scores none of the tasks {', '.join(preferred)} on single "
                         f"answer tokens; run the analyses with tasks it can score")
    return usable[:n]


def per_layer_accuracy(model: Model, folder: str | Path | None = None, n: int = QUICK_EPISODES) -> pd.DataFrame:
    """Dev accuracy per task and layer: this model's stored reproduce run, else a quick live sweep of
    `quick_tasks` on n episodes each (for a model with no stored results)."""
    per_layer = store.precomputed(store.results_stem("reproduce", model.name, folder).name + "_per_layer", folder)
    if per_layer is None:
        per_layer = pd.concat([layer_accuracy(model, t, n=n) for t in quick_tasks(model)], ignore_index=True)
    return per_layer


def default_layer(model: Model, folder: str | Path | None = None) -> int:
    """L: the layer with the best mean dev accuracy (`per_layer_accuracy`), used when no layer is given."""
    return best_mean_layer(per_layer_accuracy(model, folder))


def evaluate_task(model: Model, task: Task | str, protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT,
                  layers=None) -> tuple[dict, pd.DataFrame]:
    """One task under the protocol: a summary row and a per-layer dev-accuracy table."""
    results, per_layer = run_tasks(model, [task], protocol, fmt, layers=layers, progress=False)
    return results.iloc[0].drop("tv_over_icl").to_dict(), per_layer


def run_tasks(model: Model, task_names=TASK_NAMES, protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT,
              layers=None, progress: bool = True, remote: bool | str = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The protocol on many tasks (names or Task objects): (results table, per-layer dev table).

    All tasks' episodes go through the engine together, so batches stay large even for one task's
    50 queries (a GPU then runs a 7B model at a few forwards per stage instead of a few per task).
    remote=True (NDIF) or "local" (nnsight's simulation of it) runs each task through nnsight traces only
    (`interventions.reference_protocol`), with the same tables as the result.
    """
    layers = list(range(model.n_layers)) if layers is None else [model.check_layer(l) for l in layers]
    if remote:
        return traced_tasks(model, task_names, protocol, fmt, remote, progress)
    p = protocol
    dev = [sample_split(model, t, "dev", p.n_dev, p, fmt) for t in task_names]
    test = [sample_split(model, t, "test", p.n_test, p, fmt) for t in task_names]
    say = (lambda text: f"{text} ({len(dev)} tasks, {model.name})") if progress else (lambda text: None)  # noqa: E731
    dev_acc = _dev_stage(model, dev, layers, fmt, say)
    best = [best_of(layers, acc) for acc in dev_acc]
    predictions = _test_stage(model, test, best, fmt, say)
    scores = [{method: accuracy(model, pred, target) for method, pred in predicted.items()}
              for predicted, (_, _, target) in zip(predictions, test)]
    return _tables(model, [task for task, _, _ in dev], layers, dev_acc, best, scores)


def _per_task(values: torch.Tensor, splits) -> list[torch.Tensor]:
    """Rows of all tasks' episodes, cut back into one block per task."""
    return list(values.split([len(episodes) for _, episodes, _ in splits]))


def _flat(splits) -> list:
    return [ep for _, episodes, _ in splits for ep in episodes]


def _dev_stage(model: Model, dev, layers, fmt, say) -> list[list[float]]:
    """theta of every dev episode, then every query patched at every layer: accuracy per task and layer."""
    theta, _ = engine.episode_states(model, _flat(dev), fmt, icl=False, progress=say("dev task vectors"))
    sweep = engine.layer_sweep(model, encode_queries(model, _flat(dev), fmt), theta, layers,
                               progress=say(f"dev sweep, {len(layers)} layers"))
    return [accuracy(model, answers, target[:, None], dim=0) for answers, (_, _, target) in zip(_per_task(sweep, dev), dev)]


def _test_stage(model: Model, test, best: list[int], fmt, say) -> list[dict[str, torch.Tensor]]:
    """Baseline, ICL and task-vector answers on the test episodes (theta at each task's best dev layer)."""
    theta, icl = engine.episode_states(model, _flat(test), fmt, progress=say("test ICL and task vectors"))
    queries = encode_queries(model, _flat(test), fmt)
    baseline = engine.next_tokens(model, queries)
    row_layer = torch.tensor(best).repeat_interleave(torch.tensor([len(eps) for _, eps, _ in test]))
    tv = torch.empty(len(queries), dtype=torch.long, device=model.device)
    for layer in sorted(set(best)):  # one sweep per distinct best layer, over the rows of the tasks using it
        rows = torch.nonzero(row_layer == layer).flatten()
        tv[rows.to(tv.device)] = engine.layer_sweep(model, [queries[i] for i in rows], theta[rows], [layer])[:, 0]
    return [{"baseline": b, "icl": i, "tv": t}
            for b, i, t in zip(_per_task(baseline, test), _per_task(icl, test), _per_task(tv, test))]


def _tables(model: Model, tasks, layers, dev_acc, best, scores) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The results table (one row per task) and the per-layer dev table."""
    rows = [{"model": model.name, "task": task.name, "category": task.category, "n_pairs": len(task.pairs),
             **score, "best_layer": layer, "n_layers": model.n_layers}
            for task, score, layer in zip(tasks, scores, best)]
    results = pd.DataFrame(rows)
    results["tv_over_icl"] = results["tv"] / results["icl"].where(results["icl"] > 0)
    curves = [pd.DataFrame({"model": model.name, "task": task.name, "category": task.category, "layer": layers,
                            "rel_depth": [l / model.n_layers for l in layers], "dev_acc": acc})
              for task, acc in zip(tasks, dev_acc)]
    return results, pd.concat(curves, ignore_index=True)


def traced_tasks(model: Model, task_names=TASK_NAMES, protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT,
                 remote: bool | str = True, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`run_tasks` through nnsight traces only, task by task (NDIF, or nnsight's local simulation of it).
    Each batch is one request: on NDIF, send all prompts of a step at once (batch_size=None)."""
    from tqdm.auto import tqdm

    from .interventions import reference_protocol

    tasks = [get_task(t) if isinstance(t, str) else t for t in task_names]
    batch_size = None if remote is True else 32
    runs = [reference_protocol(model, usable_task(task, model.tokenizer, fmt)[0], protocol, fmt, remote, batch_size)
            for task in tqdm(tasks, desc=f"traced protocol ({model.name})", disable=not progress)]
    scores = [{m: run[m] for m in ("baseline", "icl", "tv")} for run in runs]
    layers = list(range(model.n_layers))
    return _tables(model, [usable_task(t, model.tokenizer, fmt)[0] for t in tasks], layers,
                   [run["dev_acc"] for run in runs], [run["best_layer"] for run in runs], scores)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Means per category and overall, with the TV/ICL ratio of the means."""
    cols = ["baseline", "icl", "tv"]
    by_cat = results.groupby("category", sort=False)[cols].mean()
    by_cat.loc["all"] = results[cols].mean()
    by_cat["tv_over_icl"] = by_cat["tv"] / by_cat["icl"]
    return by_cat.reset_index()


def reproduce(model: Model, task_names=TASK_NAMES, out_dir: str | Path | None = None, protocol: Protocol = PAPER,
              figures: bool = True, progress: bool = True, remote: bool | str = False) -> pd.DataFrame:
    """The main job: all tasks, results as CSV + JSON and the paper's two figures under out_dir
    (remote: through nnsight traces only, on NDIF or in its local simulation; see `run_tasks`)."""
    from . import plots

    start = time.perf_counter()
    results, per_layer = run_tasks(model, task_names, protocol, progress=progress, remote=remote)
    seconds = time.perf_counter() - start
    stem = store.results_stem("reproduce", model.name, out_dir)
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
