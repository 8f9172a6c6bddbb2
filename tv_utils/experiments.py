"""The paper's protocol (`protocol.py`: settings, scoring, layer on dev, intervals) run through the fast engine
as tidy tables: baseline / ICL / task-vector accuracy per task with 95% intervals and the TV-vs-ICL paired
test, dev accuracy per layer, every episode's hit, several seeds, and the layer L a model uses when none is
given (its best mean dev layer).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from . import engine, store
from .models import Model
from .prompts import DEFAULT_FORMAT, PromptFormat, accepted_ids, usable_task
from .protocol import (INTERVALS, PAPER, Protocol, best_mean_layer, best_of, compare, episode_table, layer_stability,
                       main_seed, mean_interval, ratio_interval, score, tie_layers, tie_span, with_query_intervals)
from .tasks import TASK_NAMES, Task, get_task, sample_episodes

__all__ = ["default_layer", "encode_queries", "evaluate_task", "layer_accuracy", "METHODS", "per_layer_accuracy",
           "prepare_split", "QUICK_EPISODES", "quick_tasks", "reference_diff", "reproduce", "rescore",
           "RESCORE_COLUMNS", "Run", "run_tasks", "run_with_theta", "sample_split", "seed_summary", "SEEDS_METRICS",
           "Split", "summarize", "traced_tasks"]


def _targets(episodes, answer_ids: dict[str, int], device) -> torch.Tensor:
    return torch.tensor([answer_ids[ep.query[1]] for ep in episodes], device=device)


def encode_queries(model: Model, episodes, fmt: PromptFormat) -> list[list[int]]:
    """Token ids of each episode's zero-shot query prompt `x ->`."""
    return model.encode([fmt.query(ep.query[0]) for ep in episodes])


@dataclass
class Split:
    """Episodes of one task and split with their targets, theta at every layer and ICL predictions; `accepted`:
    every answer token each query accepts, for a task with several answers to some inputs (else None), to
    score with: `accuracy(model, pred, s.target, accepted=s.accepted)`."""

    task: Task
    episodes: list
    target: torch.Tensor
    theta: torch.Tensor
    icl_pred: torch.Tensor
    queries: list[list[int]]
    accepted: torch.Tensor | None = None


def sample_split(model: Model, task: Task | str, split: str, n: int, protocol: Protocol, fmt: PromptFormat):
    """A split's episodes over the pairs this tokenizer can score, and their target tokens."""
    task = get_task(task) if isinstance(task, str) else task
    usable, answer_ids = usable_task(task, model.tokenizer, fmt, protocol.prompts)
    episodes = sample_episodes(usable, n, protocol.k, protocol.n_dummies, split, protocol.seed, protocol.sampling)
    return usable, episodes, _targets(episodes, answer_ids, model.device)


def prepare_split(model: Model, task: Task | str, split: str, n: int, protocol: Protocol = PAPER,
                  fmt: PromptFormat = DEFAULT_FORMAT, icl: bool = True) -> Split:
    """Sample a split's episodes and run them once through the engine
    (icl=False skips the ICL prompts when only theta is needed)."""
    usable, episodes, target = sample_split(model, task, split, n, protocol, fmt)
    theta, icl_pred = engine.episode_states(model, episodes, fmt, icl=icl)
    return Split(usable, episodes, target, theta, icl_pred, encode_queries(model, episodes, fmt),
                 accepted_ids(model.tokenizer, usable, episodes, fmt))


def layer_accuracy(model: Model, task, n: int = PAPER.n_dev, protocol: Protocol = PAPER,
                   split: str = "dev") -> pd.DataFrame:
    """Task-vector accuracy at every layer on one split (the dev half of `evaluate_task`), with 95% intervals."""
    s = prepare_split(model, task, split, n, protocol, icl=False)
    dev_hits = score(model, s.task, s.episodes, engine.layer_sweep(model, s.queries, s.theta), s.target,
                     protocol.scoring)
    return _curve(model, s.task, list(range(model.n_layers)), dev_hits, s.episodes)


def _curve(model: Model, task: Task, layers, dev_hits: torch.Tensor, episodes) -> pd.DataFrame:
    """One task's per-layer table: dev accuracy at each layer with its 95% interval (`query_interval`: over the
    queries where the episodes repeat them) and the number of distinct queries."""
    curve = pd.DataFrame({"model": model.name, "task": task.name, "category": task.category, "layer": layers,
                          "rel_depth": [l / model.n_layers for l in layers], "n_dev": len(dev_hits),
                          "dev_acc": dev_hits.double().mean(0).tolist()})
    queries = [ep.query[0].strip() for ep in episodes]
    hits = {(layer, "dev_acc"): dev_hits[:, i].numpy() for i, layer in enumerate(layers)}
    return with_query_intervals(curve, ["dev_acc"], hits, dict.fromkeys(layers, queries), key="layer",
                                label=f"{task.name}/dev/")


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


class Run(NamedTuple):
    """One run of the protocol: `results` (a row per task, with intervals and the TV-vs-ICL paired test),
    `per_layer` (dev accuracy per task and layer), `episodes` (every hit: task, split, method, layer, episode)
    and `stability` (share of dev resamples that choose each layer, per task)."""

    results: pd.DataFrame
    per_layer: pd.DataFrame
    episodes: pd.DataFrame
    stability: pd.DataFrame


def evaluate_task(model: Model, task: Task | str, protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT,
                  layers=None) -> tuple[dict, pd.DataFrame]:
    """One task under the protocol: a summary row and a per-layer dev-accuracy table."""
    run = run_tasks(model, [task], protocol, fmt, layers=layers, progress=False)
    return run.results.iloc[0].drop("tv_over_icl").to_dict(), run.per_layer


def run_tasks(model: Model, task_names=TASK_NAMES, protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT,
              layers=None, progress: bool = True, remote: bool | str = False) -> Run:
    """The protocol on many tasks (names or Task objects), kept episode by episode (see `Run`).

    All tasks' episodes go through the engine together, so batches stay large even for one task's
    50 queries (a GPU then runs a 7B model at a few forwards per stage instead of a few per task).
    remote=True (NDIF) or "local" (nnsight's simulation of it) runs each task through nnsight traces only
    (`interventions.reference_protocol`), with the same tables as the result.
    """
    layers = None if layers is None else [model.check_layer(l) for l in layers]  # bad layers fail before any work
    if remote:
        return traced_tasks(model, task_names, protocol, fmt, remote, progress)
    return run_with_theta(model, task_names, protocol, fmt, layers, progress)[0]


def run_with_theta(model: Model, task_names=TASK_NAMES, protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT,
                   layers=None, progress: bool = True) -> tuple[Run, dict[str, list[torch.Tensor]]]:
    """`run_tasks` on the engine, with the θ it computed for every episode at every layer, per split and task
    ({"dev": [[n_dev, n_layers, H], ...], "test": [...]}), for analyses of the same episodes to reuse."""
    layers = list(range(model.n_layers)) if layers is None else [model.check_layer(l) for l in layers]
    p = protocol
    dev = [sample_split(model, t, "dev", p.n_dev, p, fmt) for t in task_names]
    test = [sample_split(model, t, "test", p.n_test, p, fmt) for t in task_names]
    say = (lambda text: f"{text} ({len(dev)} tasks, {model.name})") if progress else (lambda text: None)  # noqa: E731
    dev_theta, dev_pred = _dev_stage(model, dev, layers, fmt, say)
    dev_hits = [score(model, task, episodes, pred, target, p.scoring, fmt).cpu()
                for pred, (task, episodes, target) in zip(dev_pred, dev)]
    best = [best_of(layers, hits.double().mean(0).tolist()) for hits in dev_hits]
    test_theta, predictions = _test_stage(model, test, best, fmt, say)
    test_hits = [{method: score(model, task, episodes, pred, target, p.scoring, fmt) for method, pred in pred_m.items()}
                 for pred_m, (task, episodes, target) in zip(predictions, test)]
    scored = [{"dev": (d[1], d[2], d_pred, d_hits), "test": (t[1], t[2], t_pred, t_hits)}
              for d, d_pred, d_hits, t, t_pred, t_hits in zip(dev, dev_pred, dev_hits, test, predictions, test_hits)]
    run = _tables(model, [task for task, _, _ in dev], layers, scored, p)
    return run, {"dev": _per_task(dev_theta, dev), "test": _per_task(test_theta, test)}


def _per_task(values: torch.Tensor, splits) -> list[torch.Tensor]:
    """Rows of all tasks' episodes, cut back into one block per task."""
    return list(values.split([len(episodes) for _, episodes, _ in splits]))


def _flat(splits) -> list:
    return [ep for _, episodes, _ in splits for ep in episodes]


def _dev_stage(model: Model, dev, layers, fmt, say) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """theta of every dev episode, then every query patched at every layer: (theta, answers [n_dev, n_layers] per
    task)."""
    theta, _ = engine.episode_states(model, _flat(dev), fmt, icl=False, progress=say("dev task vectors"),
                                     by_length=True)
    sweep = engine.layer_sweep(model, encode_queries(model, _flat(dev), fmt), theta, layers,
                               progress=say(f"dev sweep, {len(layers)} layers"))
    return theta, [answers.cpu() for answers in _per_task(sweep, dev)]


def _test_stage(model: Model, test, best: list[int], fmt, say) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """theta of every test episode, and baseline, ICL and task-vector answers (theta at each task's best dev
    layer) per task."""
    theta, icl = engine.episode_states(model, _flat(test), fmt, progress=say("test ICL and task vectors"),
                                       by_length=True)
    queries = encode_queries(model, _flat(test), fmt)
    row_layer = torch.tensor(best).repeat_interleave(torch.tensor([len(eps) for _, eps, _ in test]))
    tv, baseline = (torch.empty(len(queries), dtype=torch.long, device=model.device) for _ in range(2))
    unpatched = engine.Added(torch.zeros_like(theta[0, 0]))  # nothing added after the last layer: the query as it is
    for layer in sorted(set(best)):  # one sweep per distinct best layer, over the rows of the tasks using it
        rows = torch.nonzero(row_layer == layer).flatten()
        tv[rows.to(tv.device)], baseline[rows.to(tv.device)] = (answers[:, 0] for answers in engine.layer_sweeps(
            model, [queries[i] for i in rows], [theta[rows], unpatched], [[layer], [model.n_layers - 1]]))
    return theta, [{"baseline": b, "icl": i, "tv": t}
                   for b, i, t in zip(_per_task(baseline, test), _per_task(icl, test), _per_task(tv, test))]


METHODS = ("baseline", "icl", "tv")  # the results table's accuracy columns


def _columns(tokenizer, episodes, target, pred) -> tuple[dict, dict]:
    """The episode table's columns of one split and method: per episode the query and its answer (stripped, as
    the task writes them) with the target token and its text; per cell the predicted token and its text (decoded
    without special tokens, as the official code reads it; ids beyond the tokenizer as ""), so that any scoring
    rule can be applied later (`rescore`)."""
    target, pred = target.cpu(), pred.cpu()
    ids = sorted({*pred.flatten().tolist(), *target.tolist()})
    known = [i for i in ids if i < len(tokenizer)]
    text = dict.fromkeys(ids, "") | dict(zip(known, tokenizer.batch_decode([[i] for i in known],
                                                                           skip_special_tokens=True)))
    per_episode = {"query": [ep.query[0].strip() for ep in episodes], "answer": [ep.query[1] for ep in episodes],
                   "target": target.tolist(), "target_text": [text[i] for i in target.tolist()]}
    return per_episode, {"pred": pred.numpy(), "pred_text": np.vectorize(text.get, otypes=[object])(pred.numpy())}


def _tables(model: Model, tasks, layers, scored: list[dict], protocol: Protocol) -> Run:
    """The run's tables from each task's scored splits, {"dev": (episodes, targets, predictions, hits)
    [n_dev, n_layers], "test": (episodes, targets, {method: predictions [n_test]}, {method: hits})}."""
    rows, curves, episodes, stability, test_hits, queries = [], [], [], [], {}, {}
    for task, split in zip(tasks, scored):
        (dev_eps, dev_target, dev_pred, dev), (test_eps, test_target, test_pred, test) = split["dev"], split["test"]
        dev_acc = dev.double().mean(0).tolist()
        best = best_of(layers, dev_acc)
        ties = " ".join(map(str, tie_layers(layers, dev_acc, len(dev))))
        shares = layer_stability(dev, layers, f"{task.name}/{protocol.seed}")
        rows.append({"model": model.name, "task": task.name, "category": task.category, "n_pairs": len(task.pairs),
                     "n_test": len(test["tv"]), **{m: test[m].double().mean().item() for m in METHODS},
                     "best_layer": best, "tie_layers": ties, "tie_span": tie_span(ties),
                     "layer_share": shares.get(best, 0.0), "n_layers": model.n_layers})
        curves.append(_curve(model, task, layers, dev, dev_eps))
        episodes += [episode_table(task.name, "dev", "tv", dev.numpy(), layers,
                                   *_columns(model.tokenizer, dev_eps, dev_target, dev_pred), seed=protocol.seed)]
        episodes += [episode_table(task.name, "test", m, test[m].cpu().numpy(), best if m == "tv" else None,
                                   *_columns(model.tokenizer, test_eps, test_target, test_pred[m]),
                                   seed=protocol.seed) for m in METHODS]
        test_hits |= {(task.name, m): test[m].cpu().numpy() for m in METHODS}
        queries[task.name] = [ep.query[0].strip() for ep in test_eps]
        stability.append(pd.DataFrame({"task": task.name, "layer": list(shares), "share": list(shares.values())}))
    results = with_query_intervals(pd.DataFrame(rows), list(METHODS), test_hits, queries)
    results["tv_over_icl"] = results["tv"] / results["icl"].where(results["icl"] > 0)
    episodes = pd.concat(episodes, ignore_index=True)
    test = episodes[episodes.split == "test"]
    tv_icl = compare(test, "tv", "icl", exact=True).set_index("task").loc[results.task]
    results["tv_minus_icl"] = tv_icl["diff"].to_numpy()
    results["tv_minus_icl_lo"], results["tv_minus_icl_hi"] = tv_icl["diff_lo"].to_numpy(), tv_icl["diff_hi"].to_numpy()
    results["tv_vs_icl_p"], results["tv_vs_icl_p_holm"] = tv_icl["p_value"].to_numpy(), tv_icl["p_holm"].to_numpy()
    results["tv_vs_icl"] = tv_icl["verdict"].to_numpy()
    return Run(results, pd.concat(curves, ignore_index=True), episodes, pd.concat(stability, ignore_index=True))


def traced_tasks(model: Model, task_names=TASK_NAMES, protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT,
                 remote: bool | str = True, progress: bool = True) -> Run:
    """`run_tasks` through nnsight traces only, task by task (NDIF, or nnsight's local simulation of it).
    Each batch is one request: on NDIF, send all prompts of a step at once (batch_size=None)."""
    from tqdm.auto import tqdm

    from .interventions import reference_protocol

    batch_size = None if remote is True else 32
    runs = [reference_protocol(model, task, protocol, fmt, remote, batch_size)
            for task in tqdm(task_names, desc=f"traced protocol ({model.name})", disable=not progress)]
    scored = [{"dev": (run["dev_episodes"], run["dev_target"], run["dev_pred"], run["dev_hits"]),
               "test": (run["test_episodes"], run["test_target"], {m: run[f"{m}_pred"] for m in METHODS},
                        {m: run[f"{m}_hits"] for m in METHODS})} for run in runs]
    return _tables(model, [run["task"] for run in runs], list(range(model.n_layers)), scored, protocol)


def summarize(results: pd.DataFrame, episodes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Means per category and overall, with the TV/ICL ratio of the means; given the run's episodes, each with
    its 95% bootstrap interval (queries of the main seed, with their episodes, resampled within tasks; episodes
    in tables without queries)."""
    by_cat = results.groupby("category", sort=False)[list(METHODS)].mean()
    by_cat.loc["all"] = results[list(METHODS)].mean()
    by_cat["tv_over_icl"] = by_cat["tv"] / by_cat["icl"]
    by_cat = by_cat.reset_index()
    if episodes is None:
        return by_cat
    test = main_seed(episodes)
    test = test[test.split == "test"]
    groups = test.groupby(["task", "method"], sort=False)
    hits = {key: g.hit.to_numpy() for key, g in groups}
    queries = {task: g["query"].tolist() for (task, m), g in groups if m == "tv"} if "query" in test else None
    for i, category in enumerate(by_cat.category):
        tasks = results.task if category == "all" else results.task[results.category == category]
        by_query = [queries[t] for t in tasks] if queries else None
        for m in METHODS:
            by_cat.loc[i, [f"{m}_lo", f"{m}_hi"]] = mean_interval([hits[t, m] for t in tasks], f"{category}/{m}",
                                                                  queries_by_task=by_query)
        by_cat.loc[i, ["tv_over_icl_lo", "tv_over_icl_hi"]] = ratio_interval(
            [hits[t, "tv"] for t in tasks], [hits[t, "icl"] for t in tasks], category, queries_by_task=by_query)
    order = ["category"] + [c for m in (*METHODS, "tv_over_icl") for c in (m, f"{m}_lo", f"{m}_hi")]
    return by_cat[order]


RESCORE_COLUMNS = ("seed", "task", "split", "method", "layer", "episode", "query", "answer", "target", "target_text",
                   "pred", "pred_text")  # what `rescore` needs of a stored episode table


def rescore(episodes: pd.DataFrame, scoring: str,
            categories: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stored run's episodes scored again by another rule, without the model: (results, episodes).

    scoring="kit": the predicted token's stripped text equals the target token's (or the ids are equal);
    "paper": the official string rules on the decoded prediction (`prompts.paper_match`). The best layer is chosen
    again on the rescored dev curve; test predictions of the task vector exist only at the layer the run chose,
    so TV is reported there, and `layer_rescored` gives the layer the rescored dev curve would choose. A user's
    task that accepts several answers is scored on its first. `categories` ({task: category}) defaults to the
    paper's tasks' (others are "custom")."""
    from .prompts import paper_match

    missing = [c for c in RESCORE_COLUMNS if c not in episodes]
    if missing:
        raise ValueError(f"this episode table has no {', '.join(missing)} column(s): it was stored before runs kept "
                         f"their predictions; run reproduce again to rescore it")
    if scoring not in ("kit", "paper"):
        raise ValueError(f"unknown scoring {scoring!r}; valid: kit, paper")
    cats = {t: get_task(t).category for t in TASK_NAMES} | (categories or {})
    table = episodes.copy()
    pred, target = table.pred_text.fillna("").astype(str), table.target_text.fillna("").astype(str)
    if scoring == "kit":
        stripped = pred.str.strip()
        same = (table.pred == table.target) | ((stripped != "") & (stripped == target.str.strip()))
        table["hit"] = same.astype(int)
    else:
        decoded = pred.str.split("\n").str[0]
        table["hit"] = [int(paper_match(cats.get(t, "custom"), p, a))
                        for t, p, a in zip(table.task, decoded, table.answer.astype(str))]
    rows = []
    for (seed, task), group in table.groupby(["seed", "task"], sort=False):
        dev = group[group.split == "dev"].pivot_table(index="episode", columns="layer", values="hit")
        test = group[group.split == "test"]
        hits = {m: test[test.method == m].sort_values("episode").hit for m in METHODS}
        layers = [int(c) for c in dev.columns]
        rows.append({"seed": seed, "task": task, "category": cats.get(task, "custom"), "n_test": len(hits["tv"]),
                     **{m: hits[m].mean() for m in METHODS},
                     "n_queries": test[test.method == "tv"]["query"].nunique(),
                     "best_layer": int(test[test.method == "tv"].layer.iloc[0]),
                     "layer_rescored": best_of(layers, dev.mean().tolist())})
    return pd.DataFrame(rows), table


SEEDS_METRICS = ("baseline", "icl", "tv", "tv_over_icl", "best_layer")


def seed_summary(by_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd across seeds of every per-task number (rows: tasks, then each category's and the overall
    mean of the per-task accuracies), and the best layers the seeds chose."""
    per_task = by_seed.groupby(["task", "category"], sort=False)
    table = per_task[list(SEEDS_METRICS)].agg(["mean", "std"])
    table.columns = [f"{m}_{stat}" if stat == "std" else m for m, stat in table.columns]
    table = table.rename(columns={f"{m}_std": f"{m}_sd" for m in SEEDS_METRICS}).reset_index()
    table["layers"] = per_task["best_layer"].agg(lambda s: " ".join(map(str, sorted(set(s))))).to_numpy()
    table["n_seeds"] = per_task.size().to_numpy()
    means = []
    for category, group in [*by_seed.groupby("category", sort=False), ("all", by_seed)]:
        per_seed = group.groupby("seed")[["baseline", "icl", "tv"]].mean()
        per_seed["tv_over_icl"] = per_seed["tv"] / per_seed["icl"]
        means.append({"task": f"mean ({category})", "category": category, "n_seeds": len(per_seed),
                      **{m: per_seed[m].mean() for m in per_seed}, **{f"{m}_sd": per_seed[m].std() for m in per_seed}})
    return pd.concat([table, pd.DataFrame(means)], ignore_index=True)


def reproduce(model: Model, task_names=TASK_NAMES, out_dir: str | Path | None = None, protocol: Protocol = PAPER,
              figures: bool = True, progress: bool = True, remote: bool | str = False, seeds=None) -> Run:
    """The main job: all tasks, results as CSV + JSON, every episode's hit, and the paper's two figures under
    out_dir (remote: through nnsight traces only, on NDIF or in its local simulation; see `run_tasks`).
    With `seeds`, the protocol runs once per seed (new queries, demonstrations and dummies); the first seed's
    run gives the main tables, and the seeds' table holds every seed's per-task numbers with their mean and sd."""
    from . import plots

    seeds = list(seeds) if seeds else [protocol.seed]
    start = time.perf_counter()
    runs = [run_tasks(model, task_names, replace(protocol, seed=s), progress=progress, remote=remote) for s in seeds]
    seconds = time.perf_counter() - start
    run, protocol = runs[0], replace(protocol, seed=seeds[0])
    stem = store.results_stem("reproduce", model.name, out_dir)
    store.save_table(run.results, f"{stem}_results.csv")
    store.save_table(run.per_layer, f"{stem}_per_layer.csv")
    store.save_table(run.stability, f"{stem}_layer_stability.csv")
    store.save_table(pd.concat([r.episodes for r in runs], ignore_index=True), f"{stem}_episodes.csv.gz")
    summary = summarize(run.results, run.episodes)
    records = run.results.round(4).to_dict("records")
    for rec in records:
        rec["dev_acc_by_layer"] = run.per_layer.loc[run.per_layer.task == rec["task"], "dev_acc"].round(4).tolist()
    report = {"model": model.name, "dtype": model.info["dtype"], "device": model.info["device"],
              "versions": store.versions(), "protocol": asdict(protocol), "seeds": seeds,
              "intervals": INTERVALS,
              "summary": summary.round(4).to_dict("records"), "tasks": records}
    if len(seeds) > 1:
        by_seed = pd.concat([r.results.assign(seed=s) for s, r in zip(seeds, runs)], ignore_index=True)
        by_seed = by_seed[["seed", "task", "category", *SEEDS_METRICS]]
        store.save_table(by_seed, f"{stem}_seeds.csv")
        store.save_table(seed_summary(by_seed), f"{stem}_seeds_summary.csv")
    store.save_json(report, f"{stem}_results.json")
    if figures:
        store.save_figure(plots.accuracy_bars(run.results), f"{stem}_accuracy")
        store.save_figure(plots.layer_curves(run.per_layer), f"{stem}_layers")
    run.results.attrs["seconds"] = seconds
    return run


def _bounds(row: pd.Series, column: str):
    """(lo, hi) of a results row's accuracy column, or None where the table has no interval for it."""
    lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
    return None if lo is None or hi is None or pd.isna(lo) or pd.isna(hi) else (float(lo), float(hi))


def reference_diff(results: pd.DataFrame, per_layer: pd.DataFrame, reference: pd.DataFrame,
                   reference_per_layer: pd.DataFrame | None = None) -> tuple[str, pd.DataFrame]:
    """A run against the committed reference, task by task: a one-line verdict, and a table of the accuracies
    that differ, each with both 95% intervals and that of the difference (Newcombe from the two tables' own
    intervals: the two runs may rest on different episodes)."""
    from .protocol import newcombe

    shared = [t for t in results.task if t in set(reference.task)]
    ours, ref = results.set_index("task").loc[shared], reference.set_index("task").loc[shared]
    rows = []
    for task in shared:
        a, b = ours.loc[task], ref.loc[task]
        for m in METHODS:
            if a[m] != b[m]:
                lo, hi = newcombe(a[m], int(a.n_test), b[m], int(b.get("n_test", PAPER.n_test)),
                                  _bounds(a, m), _bounds(b, m))  # each table's own intervals, where it has them
                rows.append({"task": task, "method": m, "reference": b[m], "reference_lo": b.get(f"{m}_lo"),
                             "reference_hi": b.get(f"{m}_hi"), "this_run": a[m], "this_run_lo": a[f"{m}_lo"],
                             "this_run_hi": a[f"{m}_hi"], "difference": a[m] - b[m], "difference_lo": lo,
                             "difference_hi": hi})
        if a.best_layer != b.best_layer:
            rows.append({"task": task, "method": "best_layer", "reference": b.best_layer, "this_run": a.best_layer,
                         "difference": a.best_layer - b.best_layer})
    layers_same = reference_per_layer is not None and all(
        per_layer[per_layer.task == t].dev_acc.tolist()
        == reference_per_layer[reference_per_layer.task == t].dev_acc.tolist()
        for t in shared)
    same = len({r["task"] for r in rows})
    if not shared:
        return "no task of this run is in the committed reference", pd.DataFrame(rows)
    if not rows and layers_same and len(shared) == len(reference):
        return (f"identical to the committed reference ({len(shared)}/{len(reference)} tasks, every layer)",
                pd.DataFrame())
    text = (f"differs from the committed reference on {same} of {len(shared)} shared tasks "
            f"({len(reference)} in the reference); per-layer dev accuracy "
            f"{'identical' if layers_same else 'differs'} on the shared tasks")
    return text, pd.DataFrame(rows)
