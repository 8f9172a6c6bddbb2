"""Every departure of the kit's protocol from the official code's, measured on one model.

The official protocol (`PROTOCOLS["paper"]`) runs once; then each of its conventions in turn is replaced by the
kit's (prompt spacing, sampling, scoring), and all three together (the kit's protocol). For each task and method
the table gives both accuracies, their difference (kit's minus the paper's) and its 95% interval, from a bootstrap
over queries: paired where the two score the same predictions (scoring: the paper run's episodes rescored), from
two independent resamples where the episodes differ (spacing and sampling draw other prompts). The mean over tasks
gets the same. The paper run's episodes, with their predictions, are stored for `rescore`.

The conflict experiment (paper Table 2) departs in its own settings too (the official overriding.py: 4
demonstrations, 100 pairs, single-token answers scored as strings; the kit's: 5, 50, first tokens):
`conflict_departures` runs both and compares them pair by pair.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from .. import store
from ..experiments import METHODS, rescore, run_tasks
from ..models import Model
from ..protocol import KIT, PROTOCOLS, Protocol, difference_interval, newcombe
from ..tasks import TASK_NAMES

__all__ = ["conflict_departures", "DEPARTURES", "differences", "markdown", "run"]

# name -> the conventions that the kit's version of this departure replaces in the official protocol
DEPARTURES = {"spacing": {"prompts": "kit"}, "sampling": {"sampling": "kit"}, "scoring": {"scoring": "kit"},
              "all three (the kit's protocol)": {"prompts": "kit", "sampling": "kit", "scoring": "kit"}}


def differences(departure: str, paper: pd.DataFrame, other: pd.DataFrame, paired: bool) -> pd.DataFrame:
    """Rows (departure, task, method, paper, kit, kit_minus_paper and its interval, queries of each) from two
    episode tables' test splits, and one row per method for the mean over their tasks (task "mean")."""
    rows = []
    tasks = list(dict.fromkeys(paper.task))
    for method in METHODS:
        a, b = (t[(t.split == "test") & (t.method == method)] for t in (other, paper))
        ga, gb = ([g for _, g in t.groupby("task", sort=False)] for t in (a, b))
        per_task, mean = difference_interval([g.hit.to_numpy() for g in ga], [g.hit.to_numpy() for g in gb],
                                             [g["query"].tolist() for g in ga], [g["query"].tolist() for g in gb],
                                             paired, f"{departure}/{method}")
        for task, x, y, (lo, hi) in zip(tasks, ga, gb, per_task):
            rows.append({"departure": departure, "task": task, "method": method, "paper": y.hit.mean(),
                         "kit": x.hit.mean(), "kit_minus_paper": x.hit.mean() - y.hit.mean(), "diff_lo": lo,
                         "diff_hi": hi, "n_queries_paper": y["query"].nunique(), "n_queries_kit": x["query"].nunique(),
                         "paired": paired})
        means = pd.DataFrame(rows[-len(tasks):])
        rows.append({"departure": departure, "task": "mean", "method": method, "paper": means.paper.mean(),
                     "kit": means.kit.mean(), "kit_minus_paper": means.kit.mean() - means.paper.mean(),
                     "diff_lo": mean[0], "diff_hi": mean[1], "n_queries_paper": means.n_queries_paper.sum(),
                     "n_queries_kit": means.n_queries_kit.sum(), "paired": paired})
    return pd.DataFrame(rows)


def run(model: Model, tasks=TASK_NAMES, protocol: Protocol = PROTOCOLS["paper"], out_dir: str | Path | None = None,
        progress: bool = True) -> dict:
    """The paper run and each departure; writes departures_<model>.csv and the paper run's
    departures_<model>_paper_episodes.csv.gz; returns {"table": ..., "paper": the paper run (`Run`)}."""
    paper = run_tasks(model, tasks, protocol, progress=progress)
    tables = []
    for name, change in DEPARTURES.items():
        if change == {"scoring": "kit"}:  # the same predictions under the kit's rule
            other, paired = rescore(paper.episodes, "kit")[1], True
        else:
            other, paired = run_tasks(model, tasks, replace(protocol, **change), progress=progress).episodes, False
        tables.append(differences(name, paper.episodes, other, paired))
    table = pd.concat(tables, ignore_index=True)
    stem = store.results_stem("departures", model.name, out_dir)
    store.save_table(table, f"{stem}.csv")
    store.save_table(paper.episodes, f"{stem}_paper_episodes.csv.gz")
    return {"table": table, "paper": paper}


def markdown(table: pd.DataFrame) -> str:
    """The README's departures table: the mean over tasks per departure and method, kit minus paper [95%]."""
    means = table[table.task == "mean"]
    lines = ["| departure | " + " | ".join(METHODS) + " |", "| --- |" + " --- |" * len(METHODS)]
    for departure, group in means.groupby("departure", sort=False):
        cells = [f"{r.kit_minus_paper:+.3f} [{r.diff_lo:+.3f}, {r.diff_hi:+.3f}]"
                 for r in group.set_index("method").loc[list(METHODS)].itertuples()]
        lines.append(f"| {departure} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def conflict_departures(model: Model, pairs=None, out_dir: str | Path | None = None) -> pd.DataFrame:
    """The conflict experiment with the kit's settings and with the official overriding experiment's
    (`conflict.paper_protocol`): per pair and method (plain ICL, θ(B) at B's best layer), accuracy on A and on B
    in each, the difference (kit's minus the paper's, Newcombe's interval from each run's own intervals, by query
    in the paper's: the runs ask different episodes), the paper run's distinct queries, and its episodes whose A
    and B answers share a first token. Writes departures_<model>_conflict.csv."""
    from . import conflict

    pairs = pairs or conflict.PAPER_CONFLICTS
    protocol, n = conflict.paper_protocol()
    kit = conflict.conflicting_tasks(model, pairs, n=conflict.KIT_N, protocol=KIT)
    kit = kit.set_index(["task_a", "task_b", "method"])
    paper = conflict.conflicting_tasks(model, pairs, n=n, protocol=protocol).set_index(["task_a", "task_b", "method"])
    rows = []
    for key in [k for k in paper.index if k[2] != conflict.OVERRIDE]:
        p, k = paper.loc[key], kit.loc[key]
        row = {"task_a": key[0], "task_b": key[1], "method": key[2], "n_paper": int(p.n), "n_kit": int(k.n),
               "layer_paper": int(p.layer), "layer_kit": int(k.layer),
               "n_queries_paper": int(p.n_queries), "same_first_token_paper": int(p.same_first_token)}
        for side in ("a", "b"):
            lo, hi = newcombe(k[f"acc_{side}"], int(k.n), p[f"acc_{side}"], int(p.n),
                              *((t[f"acc_{side}_lo"], t[f"acc_{side}_hi"]) for t in (k, p)))  # each run's own
            row |= {f"acc_{side}_paper": p[f"acc_{side}"], f"acc_{side}_kit": k[f"acc_{side}"],
                    f"acc_{side}_kit_minus_paper": k[f"acc_{side}"] - p[f"acc_{side}"],
                    f"acc_{side}_diff_lo": lo, f"acc_{side}_diff_hi": hi}
        rows.append(row)
    table = pd.DataFrame(rows)
    store.save_table(table, f"{store.results_stem('departures', model.name, out_dir)}_conflict.csv")
    return table
