"""Replication scorecard: a run's numbers beside the ones Hendel et al. (2023) publish, task by task.

A verdict compares the paper's value with our 95% interval: "within" (the paper's value lies inside it),
"above" or "below" (ours is significantly above or below the paper's), "no interval" (the run has none) and
"not in paper" (a task or pair the paper did not run). The relative depth of the best layer is checked the
other way round, ours against the paper's range: "within", "shallower" or "deeper". Means over tasks and
TV/ICL carry the bootstrap interval of the run's episodes when the run kept them (else "per-task intervals
above": per-task intervals cannot be combined into one for the mean). The paper's numbers and their sources are in tv_utils/data/paper_results.csv.
"""

from __future__ import annotations

import textwrap
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from . import store
from .protocol import mean_interval, ratio_interval

METRICS = ("baseline", "icl", "tv")
LABELS = {"baseline": "Baseline", "icl": "ICL", "tv": "TV"}
MEAN_ROW = "mean over tasks"
REGULAR, CONFLICTING = "ICL (demos of A)", "ICL + theta of B"  # the conflict table's methods
COLUMNS = ["section", "task", "metric", "paper", "paper_lo", "paper_hi", "ours", "ours_lo", "ours_hi",
           "verdict", "model", "paper_model", "source"]


def paper_results() -> pd.DataFrame:
    """The paper's numbers, one per row with its source (tv_utils/data/paper_results.csv)."""
    with files("tv_utils").joinpath("data", "paper_results.csv").open(encoding="utf-8") as f:
        return pd.read_csv(f, keep_default_na=False, na_values=[""])


def paper_per_task(paper: pd.DataFrame, paper_model: str = "mean") -> pd.DataFrame:
    """Baseline / ICL / TV per task (tasks as index): one of the paper's models, or with "mean" the mean over
    its 7 models (the paper has no per-task average of its own)."""
    rows = paper[paper.claim == "per_task"]
    if paper_model != "mean":
        if paper_model not in set(rows.model):
            raise ValueError(f"the paper has no model {paper_model!r}; valid: mean, "
                             f"{', '.join(sorted(set(rows.model)))}")
        rows = rows[rows.model == paper_model]
    return rows.pivot_table(index="task", columns="metric", values="value", aggfunc="mean")


def verdict(paper: float, lo: float, hi: float) -> str:
    """Where the paper's value falls against our 95% interval [lo, hi]."""
    if pd.isna(paper):
        return "not in paper"
    if pd.isna(lo) or pd.isna(hi):
        return "no interval"
    return "above" if paper < lo else "below" if paper > hi else "within"


def depth_verdict(ours: float, lo: float, hi: float) -> str:
    """Our relative depth of the best layer against the paper's range [lo, hi]."""
    return "shallower" if ours < lo else "deeper" if ours > hi else "within"


def _interval(df: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series]:
    """The `_lo`/`_hi` columns of `column`, or NaN where the table has none (tables from before intervals)."""
    missing = pd.Series(np.nan, index=df.index)
    return df.get(f"{column}_lo", missing), df.get(f"{column}_hi", missing)


def _fact(paper: pd.DataFrame, claim: str, metric: str, model: str | None = None, task: str | None = None):
    """One number of the paper, with its source; (NaN, "") if absent."""
    rows = paper[(paper.claim == claim) & (paper.metric == metric)]
    rows = rows if model is None else rows[rows.model == model]
    rows = rows if task is None else rows[rows.task == task]
    return (float(rows.value.iloc[0]), rows.source.iloc[0]) if len(rows) else (np.nan, "")


def scorecard(results: pd.DataFrame, conflict: pd.DataFrame | None = None, paper: pd.DataFrame | None = None,
              paper_model: str = "mean", episodes: pd.DataFrame | None = None) -> pd.DataFrame:
    """The scorecard as a tidy table: per task and metric the paper's value, ours with its 95% interval and
    a verdict; then means over tasks, TV/ICL, relative depth of the best layer, and the conflict pairs.
    Given the run's episodes, the means and TV/ICL get their bootstrap intervals (as `experiments.summarize`)."""
    paper = paper_results() if paper is None else paper
    per_task = paper_per_task(paper, paper_model)
    model = ", ".join(map(str, results["model"].unique())) if "model" in results else ""
    mean_model = "mean of 7 models" if paper_model == "mean" else paper_model
    table_source = _fact(paper, "per_task", "tv")[1]
    rows = []

    def add(section, task, metric, paper_value, ours, lo=np.nan, hi=np.nan, verdict_=None, paper_lo=np.nan,
            paper_hi=np.nan, by=mean_model, source=table_source):
        rows.append(dict(section=section, task=task, metric=metric, paper=paper_value, paper_lo=paper_lo,
                         paper_hi=paper_hi, ours=ours, ours_lo=lo, ours_hi=hi,
                         verdict=verdict_ or verdict(paper_value, lo, hi), model=model,
                         paper_model=by, source=source))

    for metric in METRICS:
        lo, hi = _interval(results, metric)
        for i, task in enumerate(results["task"]):
            value = per_task[metric].get(task, np.nan) if metric in per_task else np.nan
            add("accuracy", task, metric, value, results[metric].iloc[i], lo.iloc[i], hi.iloc[i],
                source=table_source if pd.notna(value) else "")

    shared = results[results["task"].isin(per_task.index)]
    hits = _test_hits(episodes, shared["task"]) if episodes is not None else None
    label = "all" if len(shared) == len(results) else "shared"
    for metric in METRICS:
        lo, hi = mean_interval([hits[t, metric] for t in shared.task], f"{label}/{metric}") if hits else (np.nan,) * 2
        add("summary", MEAN_ROW, metric, per_task.loc[shared["task"], metric].mean(), shared[metric].mean(),
            lo, hi, verdict_=None if hits else "per-task intervals above")
    ratio, ratio_source = _fact(paper, "model_mean", "tv_over_icl", mean_model)
    lo, hi = (ratio_interval([hits[t, "tv"] for t in shared.task], [hits[t, "icl"] for t in shared.task], label)
              if hits else (np.nan, np.nan))
    add("summary", MEAN_ROW, "tv_over_icl", ratio, shared["tv"].mean() / shared["icl"].mean(), lo, hi,
        verdict_=None if hits else "per-task intervals above", source=ratio_source)

    depth_lo, depth_source = _fact(paper, "best_layer", "rel_depth_lo")
    depth_hi, _ = _fact(paper, "best_layer", "rel_depth_hi")
    depth = results["best_layer"] / results["n_layers"]
    for task, value in zip(results["task"], depth):
        add("depth", task, "rel_depth", np.nan, value, verdict_=depth_verdict(value, depth_lo, depth_hi),
            paper_lo=depth_lo, paper_hi=depth_hi, by="7 models", source=depth_source)
    add("depth", "median over tasks", "rel_depth", np.nan, depth.median(),
        verdict_=depth_verdict(depth.median(), depth_lo, depth_hi), paper_lo=depth_lo, paper_hi=depth_hi,
        by="7 models", source=depth_source)

    if conflict is not None:
        for (a, b), pair in conflict.groupby(["task_a", "task_b"], sort=False):
            for metric, method, column in (("conflict_acc_a", REGULAR, "acc_a"),
                                           ("conflict_acc_b", CONFLICTING, "acc_b")):
                row = pair[pair["method"] == method]
                if row.empty:
                    continue
                lo, hi = _interval(row, column)
                value, source = _fact(paper, "conflict", metric, task=f"{a}:{b}")
                add("conflict", f"{a}:{b}", metric, value, row[column].iloc[0], lo.iloc[0], hi.iloc[0],
                    by="LLaMA 13B", source=source)
    return pd.DataFrame(rows, columns=COLUMNS)


def _test_hits(episodes: pd.DataFrame, tasks) -> dict:
    """{(task, method): test hits} of the run's main seed (the first in its episode table)."""
    test = episodes[(episodes.split == "test") & (episodes.seed == episodes.seed.iloc[0]) & episodes.task.isin(tasks)]
    return {(t, m): g.hit.to_numpy() for (t, m), g in test.groupby(["task", "method"], sort=False)}


def _counts(rows: pd.DataFrame, unit: str) -> str:
    """"within our interval on N of M <unit>; ours above on A, below on B" (rows with a paper value)."""
    rated = rows[rows.verdict != "not in paper"]
    n = rated.verdict.value_counts()
    if n.get("no interval", 0) == len(rated):
        return f"no intervals in this run ({len(rated)} {unit})"
    text = f"within our interval on {n.get('within', 0)} of {len(rated)} {unit}; " \
           f"ours above on {n.get('above', 0)}, below on {n.get('below', 0)}"
    return text + (f", no interval on {n['no interval']}" if n.get("no interval") else "")


def verdict_text(card: pd.DataFrame) -> str:
    """A few lines that say how the run compares with the paper (no line over 100 characters)."""
    acc, summary = card[card.section == "accuracy"], card[card.section == "summary"].set_index("metric")
    model, by = card.model.iloc[0], acc.paper_model.iloc[0] if len(acc) else ""
    lines = [f"Scorecard: {model} against Hendel et al. 2023 ({by}); 95% intervals per task"]
    for metric in METRICS:
        lines.append(f"{LABELS[metric]}: paper {_counts(acc[acc.metric == metric], 'tasks')}")
    def ours(m):
        interval = "" if pd.isna(summary.ours_lo[m]) else f" [{summary.ours_lo[m]:.2f}, {summary.ours_hi[m]:.2f}]"
        return f"{summary.ours[m]:.2f}{interval}"

    means = ", ".join(f"{LABELS[m]} {ours(m)} ({summary.paper[m]:.2f})" for m in METRICS)
    lines.append(f"Means, ours (paper): {means}")
    lines.append(f"TV/ICL of the means: {ours('tv_over_icl')} (paper {summary.paper['tv_over_icl']:.2f}): "
                 f"{summary.verdict['tv_over_icl']}")
    depth = card[card.section == "depth"]
    if len(depth):
        tasks, median = depth.iloc[:-1], depth.iloc[-1]
        lines.append(f"Best layer's relative depth: in the paper's {median.paper_lo:.2f}-{median.paper_hi:.2f} on "
                     f"{(tasks.verdict == 'within').sum()} of {len(tasks)} tasks; median {median.ours:.2f} "
                     f"({median.verdict})")
    conflict = card[card.section == "conflict"]
    if len(conflict):
        b = conflict[conflict.metric == "conflict_acc_b"]
        lines.append("Conflict (paper Table 2, LLaMA 13B), accuracy on B with demos of A and theta(B):")
        lines.append(f"  paper {_counts(b, 'pairs')}")
    return "\n".join(textwrap.fill(line, 100, subsequent_indent="  ") for line in lines)


def run(model_name: str, results_folder: str | Path | None = None, out_dir: str | Path | None = None,
        figures: bool = True) -> dict:
    """Scorecard of a stored run (default: the committed reference results), written as
    scorecard_<model>.csv and, with `figures`, scorecard_<model>.{html,png}."""
    from . import plots

    folder = results_folder or store.FIGURES
    name = model_name.replace("/", "_")
    results = store.precomputed(f"reproduce_{name}_results", folder)
    if results is None:
        raise ValueError(f"no reproduce_{name}_results.csv in {folder} or the committed results; "
                         f"run `python -m tv_utils reproduce --model {model_name}` first")
    card = scorecard(results, store.precomputed(f"conflict_{name}", folder),
                     episodes=store.precomputed(f"reproduce_{name}_episodes", folder))
    stem = store.results_stem("scorecard", model_name, out_dir)
    paths = [store.save_table(card, store.suffixed(stem, ".csv"))]
    if figures:
        paths += store.save_figure(plots.scorecard_figure(card), stem)
    return {"card": card, "text": verdict_text(card), "paths": paths,
            "results_file": store.stored_file(f"reproduce_{name}_results.csv", folder)}
