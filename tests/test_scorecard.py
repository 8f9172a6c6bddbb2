"""The replication scorecard on small hand-built tables (no model): verdicts, depth, conflict rows, the paper's
data file, the printed verdict and the CLI."""

import numpy as np
import pandas as pd
import pytest

from tv_utils import scorecard
from tv_utils.scorecard import paper_results, verdict_text

PAPER = paper_results()
MEAN_TV = PAPER[(PAPER.claim == "per_task") & (PAPER.metric == "tv")].groupby("task").value.mean()


def results(tv=(0.9, 0.2), lo=(0.8, 0.1), hi=(0.97, 0.3), best_layer=(7, 3), tasks=("next_letter", "en_es")):
    """A reproduce results table of two tasks, with 95% intervals; baseline and ICL as given for TV."""
    df = pd.DataFrame({"model": "tiny", "task": list(tasks), "category": "algorithmic", "n_pairs": 25,
                       "best_layer": list(best_layer), "n_layers": 18})
    for metric in ("baseline", "icl", "tv"):
        df[metric], df[f"{metric}_lo"], df[f"{metric}_hi"] = tv, lo, hi
    df["tv_over_icl"] = 1.0
    return df


def conflict(acc_b=0.5, lo=0.4, hi=0.6):
    rows = []
    for method, a, b in (("ICL (demos of A)", 0.9, 0.0), ("ICL + theta of B", 0.1, acc_b)):
        rows.append(dict(model="tiny", task_a="en_es", task_b="en_fr", method=method, layer=9, acc_a=a,
                         acc_a_lo=a - 0.1, acc_a_hi=min(a + 0.1, 1), acc_b=b, acc_b_lo=max(b - 0.1, 0),
                         acc_b_hi=b + 0.1))
    df = pd.DataFrame(rows)
    df.loc[1, ["acc_b_lo", "acc_b_hi"]] = lo, hi
    return df


def row(card, section, task, metric):
    hit = card[(card.section == section) & (card.task == task) & (card.metric == metric)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_paper_file_parses_and_every_row_has_a_source():
    assert list(PAPER.columns[:7]) == ["claim", "task", "category", "model", "metric", "value", "source"]
    assert PAPER.source.notna().all() and (PAPER.source.str.strip() != "").all()
    assert PAPER.value.notna().all()
    per_task = PAPER[PAPER.claim == "per_task"]
    assert per_task.groupby(["model", "task", "metric"]).size().eq(1).all()
    assert per_task.model.nunique() == 7 and per_task.task.nunique() == 18
    assert per_task.value.between(0, 1).all()
    conflicts = PAPER[PAPER.claim == "conflict"]
    assert len(conflicts) == 10 and set(conflicts.model) == {"LLaMA 13B"}


def test_paper_value_inside_our_interval_is_within_and_below_it_is_above():
    tv = MEAN_TV["next_letter"]  # 0.914
    card = scorecard.scorecard(results(tv=(0.9, 0.9), lo=(tv - 0.05, tv + 0.01), hi=(tv + 0.05, tv + 0.1)))
    assert row(card, "accuracy", "next_letter", "tv").verdict == "within"
    assert row(card, "accuracy", "en_es", "tv").verdict == "above"  # the paper's value is below our lower bound
    card = scorecard.scorecard(results(tv=(0.5, 0.5), lo=(0.4, 0.4), hi=(0.6, 0.6)))
    assert row(card, "accuracy", "next_letter", "tv").verdict == "below"
    assert row(card, "accuracy", "next_letter", "tv").paper == pytest.approx(tv)


def test_missing_intervals_unknown_tasks_and_a_named_paper_model():
    plain = results().drop(columns=[c for c in results().columns if c.endswith(("_lo", "_hi"))])
    card = scorecard.scorecard(plain)
    assert set(card[card.section == "accuracy"].verdict) == {"no interval"}
    card = scorecard.scorecard(results(tasks=("next_letter", "my_task")))
    assert row(card, "accuracy", "my_task", "tv").verdict == "not in paper"
    card = scorecard.scorecard(results(), paper_model="LLaMA 13B")
    assert row(card, "accuracy", "next_letter", "icl").paper == 0.94  # the paper's LLaMA 13B, Regular
    with pytest.raises(ValueError, match="no model"):
        scorecard.scorecard(results(), paper_model="GPT-5")


def test_depth_against_the_paper_range():
    card = scorecard.scorecard(results(best_layer=(7, 11)))  # 7/18 = 0.39, 11/18 = 0.61
    near, deep = row(card, "depth", "next_letter", "rel_depth"), row(card, "depth", "en_es", "rel_depth")
    assert near.paper_lo <= 0.35 and near.paper_hi >= 0.43
    assert (near.verdict, deep.verdict) == ("within", "deeper")
    assert row(card, "depth", "median over tasks", "rel_depth").ours == pytest.approx(0.5)
    assert scorecard.scorecard(results(best_layer=(1, 2))).query("section == 'depth'").verdict.eq(
        "shallower").all()


def test_conflict_rows_compare_with_table_2():
    card = scorecard.scorecard(results(), conflict(acc_b=0.5, lo=0.4, hi=0.6))
    b = row(card, "conflict", "en_es:en_fr", "conflict_acc_b")
    assert (b.paper, b.ours, b.verdict, b.paper_model) == (0.07, 0.5, "above", "LLaMA 13B")
    a = row(card, "conflict", "en_es:en_fr", "conflict_acc_a")
    assert (a.paper, a.ours, a.verdict) == (0.93, 0.9, "within")
    card = scorecard.scorecard(results(), conflict(acc_b=0.05, lo=0.0, hi=0.1))
    assert row(card, "conflict", "en_es:en_fr", "conflict_acc_b").verdict == "within"


def test_summary_rows_and_verdict_text():
    card = scorecard.scorecard(results(), conflict())
    mean = row(card, "summary", "mean over tasks", "tv")
    assert mean.ours == pytest.approx(0.55) and np.isnan(mean.ours_lo)
    assert mean.verdict == "per-task intervals above"
    assert row(card, "summary", "mean over tasks", "tv_over_icl").paper == pytest.approx(0.879)
    text = verdict_text(card)
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "TV: paper within our interval on 1 of 2 tasks" in text and "pairs" in text
    plain = results().drop(columns=[c for c in results().columns if c.endswith(("_lo", "_hi"))])
    assert all(len(line) <= 100 for line in verdict_text(scorecard.scorecard(plain, conflict())).splitlines())


def test_run_writes_the_table_and_the_cli_prints_the_verdict(tmp_path, capsys):
    from tv_utils.__main__ import main

    results().assign(model="tiny/model").to_csv(tmp_path / "reproduce_tiny_model_results.csv", index=False)
    conflict().to_csv(tmp_path / "conflict_tiny_model.csv", index=False)
    main(["scorecard", "--model", "tiny/model", "--results", str(tmp_path), "--out", str(tmp_path / "out"),
          "--no-figures"])
    out = capsys.readouterr().out
    assert "Scorecard: tiny/model" in out and "Conflict" in out
    card = pd.read_csv(tmp_path / "out" / "scorecard_tiny_model.csv")
    assert set(card.section) == {"accuracy", "summary", "depth", "conflict"}
    from tv_utils.plots import scorecard_figure

    assert len(scorecard_figure(card).data) == 6  # ours and the paper's, per metric


def test_cli_without_a_stored_run_fails_in_one_line(tmp_path, capsys):
    from tv_utils.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["scorecard", "--model", "no-such-model", "--results", str(tmp_path), "--no-figures"])
    assert exit_.value.code == 1 and "no reproduce_no-such-model_results.csv" in capsys.readouterr().err
