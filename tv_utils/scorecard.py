"""Replication scorecard: a run's numbers beside the ones Hendel et al. (2023) publish, task by task.

A verdict compares the paper's value with our 95% interval: "within" (the paper's value lies inside it),
"above" or "below" (ours is significantly above or below the paper's), "no interval" (the run has none) and
"not in paper" (a task or pair the paper did not run). The relative depth of the best layer is checked the
other way round, ours against the paper's range: "within", "shallower" or "deeper". Means over tasks and
TV/ICL carry the bootstrap interval of the run's episodes when the run kept them (else "per-task intervals
above": per-task intervals cannot be combined into one for the mean). The paper's numbers and their sources
are in tv_utils/data/paper_results.csv.
"""

from __future__ import annotations

import textwrap
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from . import store
from .protocol import best_mean_layer, holm, mean_of_proportions

__all__ = ["CLAIM_RULES", "CLOSEST_MODEL", "claims", "claims_text", "COLUMNS", "depth_verdict", "LABELS",
           "MEAN_ROW", "METRICS", "MIDDLE", "paper_per_task", "paper_results", "REFEREE_RULES", "RULES", "run",
           "scorecard", "stored_claims", "TOP_RANK", "TV_OVER_ICL_MIN", "verdict", "verdict_text"]

METRICS = ("baseline", "icl", "tv")
LABELS = {"baseline": "Baseline", "icl": "ICL", "tv": "TV"}
MEAN_ROW = "mean over tasks"
REGULAR, CONFLICTING = "ICL (demos of A)", "ICL + theta of B"  # the conflict table's methods
COLUMNS = ["section", "task", "metric", "paper", "paper_lo", "paper_hi", "ours", "ours_lo", "ours_hi",
           "n_queries", "verdict", "model", "paper_model", "source"]  # n_queries: distinct queries behind `ours`


def _queries(table: pd.DataFrame, i: int) -> float:
    """Row i's count of distinct queries, where the table has one (tables written before it had none)."""
    return float(table["n_queries"].iloc[i]) if "n_queries" in table else np.nan


def paper_results() -> pd.DataFrame:
    """The paper's numbers, one per row with its source (tv_utils/data/paper_results.csv)."""
    with files("tv_utils").joinpath("data", "paper_results.csv").open(encoding="utf-8") as f:
        return pd.read_csv(f, keep_default_na=False, na_values=[""])


CLOSEST_MODEL = "Pythia 2.8B"  # the paper's model closest in size to the kit's, for per-task rows


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
              paper_model: str = CLOSEST_MODEL, episodes: pd.DataFrame | None = None) -> pd.DataFrame:
    """The scorecard as a tidy table: per task and metric the paper's value, ours with its 95% interval and
    a verdict (per task against `paper_model`, by default the paper's model closest in size, with the 7-model mean
    beside; "mean": the mean alone); then means over tasks, TV/ICL, relative depth of the best layer, and the
    conflict pairs.
    Given the run's episodes, the means and TV/ICL get their bootstrap intervals (as `experiments.summarize`)."""
    paper = paper_results() if paper is None else paper
    per_task = paper_per_task(paper, paper_model)
    model = ", ".join(map(str, results["model"].unique())) if "model" in results else ""
    mean_model = "mean of 7 models" if paper_model == "mean" else paper_model
    table_source = _fact(paper, "per_task", "tv")[1]
    rows = []

    def add(section, task, metric, paper_value, ours, lo=np.nan, hi=np.nan, verdict_=None, paper_lo=np.nan,
            paper_hi=np.nan, by=mean_model, source=table_source, n_queries=np.nan):
        rows.append(dict(section=section, task=task, metric=metric, paper=paper_value, paper_lo=paper_lo,
                         paper_hi=paper_hi, ours=ours, ours_lo=lo, ours_hi=hi, n_queries=n_queries,
                         verdict=verdict_ or verdict(paper_value, lo, hi), model=model,
                         paper_model=by, source=source))

    for metric in METRICS:
        lo, hi = _interval(results, metric)
        for i, task in enumerate(results["task"]):
            value = per_task[metric].get(task, np.nan) if metric in per_task else np.nan
            add("accuracy", task, metric, value, results[metric].iloc[i], lo.iloc[i], hi.iloc[i],
                source=table_source if pd.notna(value) else "", n_queries=_queries(results, i))
    if paper_model != "mean":  # one model's numbers, with the mean of the 7 beside them
        seven = paper_per_task(paper)
        for row in rows:
            row["paper_mean"] = seven[row["metric"]].get(row["task"], np.nan) if row["metric"] in seven else np.nan

    shared = results[results["task"].isin(per_task.index)]
    means = _means(shared, episodes)
    for metric in METRICS:
        add("summary", MEAN_ROW, metric, per_task.loc[shared["task"], metric].mean(), *means[metric],
            verdict_=None if episodes is not None else "per-task intervals above")
    ratio, ratio_source = _fact(paper, "model_mean", "tv_over_icl", mean_model)
    add("summary", MEAN_ROW, "tv_over_icl", ratio, *means["tv_over_icl"],
        verdict_=None if episodes is not None else "per-task intervals above", source=ratio_source)

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
                    by="LLaMA 13B", source=source, n_queries=_queries(row, 0))
    return pd.DataFrame(rows, columns=COLUMNS + (["paper_mean"] if paper_model != "mean" else []))


def _means(results: pd.DataFrame, episodes: pd.DataFrame | None) -> dict:
    """{metric: (mean over the tasks, lo, hi)} for baseline, ICL, TV and TV/ICL: `experiments.summarize`'s
    "all" row (its bootstrap over the main seed's queries), without intervals when no episodes are given."""
    from .experiments import summarize

    row = summarize(results, episodes).set_index("category").loc["all"]
    return {m: (row[m], row.get(f"{m}_lo", np.nan), row.get(f"{m}_hi", np.nan)) for m in (*METRICS, "tv_over_icl")}


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


# ----- the paper's five claims, one verdict each -----

HOLDS, PARTLY, FAILS, NOT_RUN = "holds", "partly", "does not hold", "not run"
TV_OVER_ICL_MIN = 0.80  # "TV ≈ ICL": the paper's 7 models keep 0.83-0.91 of ICL (paper_results.csv)
MIDDLE = (0.25, 0.75)  # an intermediate layer, if not within the paper's range of relative depths
KNN_HOLDS, KNN_PARTLY = 0.90, 0.50  # leave-one-out kNN task identification from theta (chance: 1/18)
TOP_RANK = 100  # "shows task tokens": the answer token among theta's top 100 of the whole vocabulary
CLAIM_RULES = {
    "TV ≈ ICL ≫ baseline": f"holds: TV's mean interval above the baseline's and TV/ICL's lower bound ≥ "
                           f"{TV_OVER_ICL_MIN:.2f}; partly: TV above the baseline only; else does not hold",
    "best layer in the middle": f"holds: L/depth (L: best mean dev layer) within the paper's range; partly: "
                                f"within {MIDDLE[0]:.2f}-{MIDDLE[1]:.2f}; else does not hold",
    "θs cluster by task": f"leave-one-out 5-NN task identification at L: holds ≥ {KNN_HOLDS:.2f}; partly ≥ "
                          f"{KNN_PARTLY:.2f}; else does not hold",
    "θ(B) overrides demos of A": "θ(B) at B's best dev layer (the paper's rule) raises accuracy on B "
                                 "significantly (McNemar, p < 0.05): holds on ≥ 4 of 5 pairs with mean ≥ 0.50; "
                                 "partly on ≥ 1; else does not hold",
    "θ through the unembedding shows task tokens": f"the answer token in θ's top {TOP_RANK} (median over "
                                                   "episodes, at each task's best layer): holds on ≥ 2/3 of "
                                                   "the tasks; partly on ≥ 1/6; else does not hold",
}


# A referee's rules (the fidelity issue): the paper's depth band only, a majority of conflict pairs, and task
# tokens counted in θ's top words at the paper's layer (best + 2) against a control θ (`vocab.task_words`)
TASK_WORDS_HOLDS, TASK_WORDS_PARTLY = 2 / 3, 1 / 6
REFEREE_RULES = CLAIM_RULES | {
    "best layer in the middle": "holds: L/depth (L: best mean dev layer) within the paper's range over its 7 "
                                "models; else does not hold",
    "θ(B) overrides demos of A": "θ(B) at B's best dev layer (the paper's rule) raises accuracy on B "
                                 "significantly (exact McNemar, Holm over the pairs) on a majority of the pairs: "
                                 "holds; else does not hold",
    "θ through the unembedding shows task tokens": "θ's top 20 words at each task's best layer + 2 (the paper's "
                                                   "figure) hold more of the task's answers than those of the "
                                                   "control (the mean θ over all tasks): holds on ≥ 2/3 of the "
                                                   "tasks; partly on ≥ 1/6; else does not hold",
}
RULES = {"kit": CLAIM_RULES, "referee": REFEREE_RULES}


def _mean_ci(values, lo, hi) -> str:
    return f"{values:.2f} [{lo:.2f}, {hi:.2f}]"


def claims(results: pd.DataFrame, episodes: pd.DataFrame | None = None, per_layer: pd.DataFrame | None = None,
           geometry: pd.DataFrame | None = None, conflict: pd.DataFrame | None = None,
           vocab_rank: pd.DataFrame | None = None, rules: str = "referee",
           task_words: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's five claims for one model's stored tables: a verdict (holds / partly / does not hold / not
    run) by the fixed rule of RULES[rules] ("referee": REFEREE_RULES, whose claim 5 reads
    `vocab.task_words`; or the kit's looser CLAIM_RULES), and the numbers it rests on, with their 95% intervals."""
    if rules not in RULES:
        raise ValueError(f"unknown rules {rules!r}; valid: {', '.join(RULES)}")
    referee = rules == "referee"
    from .analyses.conflict import CONFLICT, OVERRIDE
    from .analyses.conflict import REGULAR as NO_THETA

    model = results["model"].iloc[0]
    rows = []

    def add(claim, verdict_, evidence):
        rows.append({"model": model, "claim": claim, "verdict": verdict_, "evidence": evidence,
                     "rule": RULES[rules][claim]})

    claim = "TV ≈ ICL ≫ baseline"
    if episodes is None:
        add(claim, NOT_RUN, "the run kept no episodes")
    else:
        means = _means(results, episodes)
        ratio = means["tv_over_icl"]
        above = means["tv"][1] > means["baseline"][2]
        add(claim, HOLDS if above and ratio[1] >= TV_OVER_ICL_MIN else PARTLY if above else FAILS,
            f"means over {len(results)} tasks: TV {_mean_ci(*means['tv'])}, ICL {_mean_ci(*means['icl'])}, "
            f"baseline {_mean_ci(*means['baseline'])}; TV/ICL {_mean_ci(*ratio)}")

    claim = "best layer in the middle"
    paper = paper_results()
    depth_lo, depth_hi = _fact(paper, "best_layer", "rel_depth_lo")[0], _fact(paper, "best_layer", "rel_depth_hi")[0]
    n_layers = int(results["n_layers"].iloc[0])
    if per_layer is None:
        add(claim, NOT_RUN, "no per-layer dev accuracy stored")
    else:
        L = best_mean_layer(per_layer)
        curve = per_layer.groupby("layer")["dev_acc"].mean()
        depth, per_task = L / n_layers, results["best_layer"] / results["n_layers"]
        middle = not referee and MIDDLE[0] <= depth <= MIDDLE[1]
        add(claim, HOLDS if depth_lo <= depth <= depth_hi else PARTLY if middle else FAILS,
            f"L = {L} of {n_layers} layers, depth {depth:.2f} (paper {depth_lo:.2f}-{depth_hi:.2f}); mean dev "
            f"accuracy {curve[L]:.2f} at L, {curve.iloc[0]:.2f} at the first layer, {curve.iloc[-1]:.2f} at "
            f"the last; per-task best layers at depth {per_task.min():.2f}-{per_task.max():.2f} "
            f"(median {per_task.median():.2f})")

    claim = "θs cluster by task"
    if geometry is None or per_layer is None:
        add(claim, NOT_RUN, "no geometry run stored")
    else:
        at = geometry.set_index("layer").loc[best_mean_layer(per_layer)]
        best = geometry.loc[geometry.knn_accuracy.idxmax()]
        knn = at.knn_accuracy
        add(claim, HOLDS if knn >= KNN_HOLDS else PARTLY if knn >= KNN_PARTLY else FAILS,
            f"at L: kNN task identification {knn:.2f} (chance {1 / len(results):.2f}), silhouette "
            f"{at.silhouette:.2f}; best layer for kNN: {int(best.layer)} ({best.knn_accuracy:.2f}); "
            f"no interval (leave-one-out over all stored θs)")

    claim = "θ(B) overrides demos of A"
    if conflict is None or "change_b_verdict" not in conflict:
        add(claim, NOT_RUN, "no conflict run with paired verdicts stored")
    else:
        rule, best, plain = (conflict[conflict.method == m] for m in (CONFLICT, OVERRIDE, NO_THETA))
        if referee:  # the conflict table's p-values are exact only from runs with the paper protocol
            p_holm = holm(rule.change_b_p)
            raised = int(sum((p < 0.05) and d > 0 for p, d in zip(p_holm, rule.change_b)))
        else:
            raised = int((rule.change_b_verdict == "better").sum())
        mean = rule.acc_b.mean()
        text = (f"accuracy on B, mean of {len(rule)} pairs: {_mean_ci(mean, *mean_of_proportions(rule.acc_b, rule.n))} "
                f"with θ(B) at B's best layer (raised significantly on {raised} of {len(rule)}), "
                f"{_mean_ci(plain.acc_b.mean(), *mean_of_proportions(plain.acc_b, plain.n))} without θ(B)")
        if len(best):
            text += (f", {_mean_ci(best.acc_b.mean(), *mean_of_proportions(best.acc_b, best.n))} at the best "
                     f"override layer chosen on dev (layers {' '.join(map(str, best.layer))})")
        if referee:
            add(claim, HOLDS if raised > len(rule) / 2 else FAILS, text)
        else:
            add(claim, HOLDS if raised >= 4 and mean >= 0.5 else PARTLY if raised >= 1 else FAILS, text)

    claim = "θ through the unembedding shows task tokens"
    if referee:
        if task_words is None:
            add(claim, NOT_RUN, "no task-words table stored (`vocab`, after reproduce)")
        else:
            more = task_words[task_words.task_share > task_words.control_share]
            share = len(more) / len(task_words)
            add(claim, HOLDS if share >= TASK_WORDS_HOLDS else PARTLY if share >= TASK_WORDS_PARTLY else FAILS,
                f"θ's top words at best + 2 hold more of the task's answers than the control's on {len(more)} of "
                f"{len(task_words)} tasks ({', '.join(more.task) or 'none'}); mean share "
                f"{task_words.task_share.mean():.2f} against {task_words.control_share.mean():.2f}; the dummies' "
                f"answers rank "
                f"{task_words.dummy_answer_median_rank.median():.0f} (median over tasks) in θ, the query's "
                f"{task_words.query_answer_median_rank.median():.0f}")
    elif vocab_rank is None:
        add(claim, NOT_RUN, "no vocabulary run stored")
    else:
        ranks = vocab_rank.set_index(["task", "layer"]).median_rank
        at_best = pd.Series([ranks.get((t, l), np.nan) for t, l in zip(results.task, results.best_layer)],
                            index=results.task).dropna()
        top = at_best[at_best < TOP_RANK]
        share = len(top) / len(at_best)
        add(claim, HOLDS if share >= 2 / 3 else PARTLY if share >= 1 / 6 else FAILS,
            f"answer token in θ's top {TOP_RANK} at the task's best layer on {len(top)} of {len(at_best)} tasks "
            f"({', '.join(top.index) or 'none'}); median rank over tasks {at_best.median():.0f}")
    return pd.DataFrame(rows, columns=["model", "claim", "verdict", "evidence", "rule"])


def stored_claims(model_name: str, folder: str | Path | None = None, rules: str = "referee") -> pd.DataFrame:
    """`claims` from a model's stored tables (default: the committed reference results), by RULES[rules]."""
    name, folder = model_name.replace("/", "_"), folder or store.FIGURES

    def read(kind: str, part: str = ""):
        return store.precomputed(f"{kind}_{name}" + (f"_{part}" if part else ""), folder)

    results = read("reproduce", "results")
    if results is None:
        raise ValueError(f"no reproduce_{name}_results.csv in {folder} or the committed results; "
                         f"run `python -m tv_utils reproduce --model {model_name}` first")
    return claims(results, read("reproduce", "episodes"), read("reproduce", "per_layer"), read("geometry", "scores"),
                  read("conflict"), read("vocab", "answer_rank"), rules, read("vocab", "task_words"))


def claims_text(table: pd.DataFrame, with_rules: bool = True) -> str:
    """The claims table as a few lines: verdict, then the numbers (and, `with_rules`, the rule behind each)."""
    lines = [f"The paper's claims on {table.model.iloc[0]}:"]
    for row in table.itertuples():
        rule = f". Rule: {row.rule}" if with_rules else ""
        lines.append(textwrap.fill(f"{row.claim}: {row.verdict.upper()}. {row.evidence}{rule}", 100,
                                   initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)


def run(model_name: str, results_folder: str | Path | None = None, out_dir: str | Path | None = None,
        figures: bool = True, rules: str = "referee") -> dict:
    """Scorecard of a stored run (default: the committed reference results), written as
    scorecard_<model>.csv and, with `figures`, scorecard_<model>.{html,png}. rules="referee" (the default): per-task
    rows against the paper's closest model (CLOSEST_MODEL, the 7-model mean beside) and the claims by
    REFEREE_RULES; rules="kit": against the 7-model mean, by CLAIM_RULES."""
    from . import plots

    folder = results_folder or store.FIGURES
    name = model_name.replace("/", "_")
    results = store.precomputed(f"reproduce_{name}_results", folder)
    if results is None:
        raise ValueError(f"no reproduce_{name}_results.csv in {folder} or the committed results; "
                         f"run `python -m tv_utils reproduce --model {model_name}` first")
    card = scorecard(results, store.precomputed(f"conflict_{name}", folder),
                     paper_model=CLOSEST_MODEL if rules == "referee" else "mean",
                     episodes=store.precomputed(f"reproduce_{name}_episodes", folder))
    claim_table = stored_claims(model_name, folder, rules)
    stem = store.results_stem("scorecard", model_name, out_dir)
    paths = [store.save_table(card, store.suffixed(stem, ".csv")),
             store.save_table(claim_table, store.suffixed(stem, "_claims.csv"))]
    if figures:
        paths += store.save_figure(plots.scorecard_figure(card), stem)
    text = verdict_text(card) + "\n\n" + claims_text(claim_table, with_rules=rules == "referee")
    return {"card": card, "claims": claim_table, "text": text, "paths": paths,
            "results_file": store.stored_file(f"reproduce_{name}_results.csv", folder)}
