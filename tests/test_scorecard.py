"""The replication scorecard on small hand-built tables (no model): verdicts, depth, conflict rows, the paper's
data file, the printed verdict and the CLI."""

import numpy as np
import pandas as pd
import pytest

from tv_utils import scorecard
from tv_utils.scorecard import paper_results, verdict_text

pytestmark = pytest.mark.tiny

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
    card = scorecard.scorecard(results(tv=(0.9, 0.9), lo=(tv - 0.05, tv + 0.01), hi=(tv + 0.05, tv + 0.1)),
                               paper_model="mean")
    assert row(card, "accuracy", "next_letter", "tv").verdict == "within"
    assert row(card, "accuracy", "en_es", "tv").verdict == "above"  # the paper's value is below our lower bound
    card = scorecard.scorecard(results(tv=(0.5, 0.5), lo=(0.4, 0.4), hi=(0.6, 0.6)), paper_model="mean")
    assert row(card, "accuracy", "next_letter", "tv").verdict == "below"
    assert row(card, "accuracy", "next_letter", "tv").paper == pytest.approx(tv)
    card = scorecard.scorecard(results().assign(n_queries=[21, 40]))  # by default against Pythia 2.8B
    assert row(card, "accuracy", "next_letter", "tv").paper_model == scorecard.CLOSEST_MODEL
    assert row(card, "accuracy", "en_es", "icl").n_queries == 40  # the distinct queries behind our accuracy


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
    card = scorecard.scorecard(results(), conflict(), paper_model="mean")
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


def claim_tables(tv=0.85, icl=0.9, baseline=0.1, best=9, knn=0.95, raised=4, acc_b=0.7, rank=10, n=50):
    """Stored tables of a three-task run, built so that each claim's verdict is known: per-episode hits
    with the given accuracies, a per-layer curve peaking at `best` of 18, geometry scores, five conflict
    pairs of which `raised` are raised significantly, and the answer's median rank at the best layers."""
    tasks = ["next_letter", "en_es", "antonyms"]

    def hits(p):
        return (np.arange(n) < round(p * n)).astype(int)

    episodes = pd.concat([pd.DataFrame({"task": t, "split": "test", "method": m, "episode": range(n), "hit": hits(p),
                                        "seed": 0}) for t in tasks for m, p in
                          (("baseline", baseline), ("icl", icl), ("tv", tv))], ignore_index=True)
    table = pd.DataFrame({"model": "toy", "task": tasks, "category": "algorithmic", "baseline": baseline,
                          "icl": icl, "tv": tv, "best_layer": best, "n_layers": 18})
    per_layer = pd.DataFrame([{"task": t, "layer": l, "dev_acc": 0.9 if l == best else 0.1}
                              for t in tasks for l in range(18)])
    geometry = pd.DataFrame({"layer": range(18), "knn_accuracy": [knn if l == best else 0.3 for l in range(18)],
                             "silhouette": 0.2})
    pairs = []
    for i in range(5):
        for method, b in (("ICL (demos of A)", 0.0), ("ICL + theta of B", acc_b)):
            pairs.append({"task_a": f"a{i}", "task_b": f"b{i}", "method": method, "layer": best, "n": n,
                          "acc_b": b, "change_b_verdict": "better" if i < raised and b else None})
    vocab = pd.DataFrame([{"task": t, "layer": best, "median_rank": rank} for t in tasks])
    return table, episodes, per_layer, geometry, pd.DataFrame(pairs), vocab


def verdicts(**kw) -> list[str]:
    return list(scorecard.claims(*claim_tables(**kw), rules="kit").verdict)


def test_claims_follow_their_rules():
    assert verdicts() == ["holds", "partly", "holds", "holds", "holds"]  # depth 9/18 = 0.5: middle, not the paper's
    assert verdicts(best=6)[1] == "holds"  # 6/18 = 0.33, inside the paper's 0.30-0.44
    assert verdicts(best=17)[1] == "does not hold"
    assert verdicts(tv=0.6)[0] == "partly"  # above the baseline, but TV/ICL's interval reaches below 0.80
    assert verdicts(tv=0.1)[0] == "does not hold"
    assert verdicts(knn=0.6)[2] == "partly" and verdicts(knn=0.2)[2] == "does not hold"
    assert verdicts(raised=1)[3] == "partly" and verdicts(raised=0)[3] == "does not hold"
    assert verdicts(acc_b=0.4)[3] == "partly"  # raised on 4 pairs, but the mean stays below 0.50
    assert verdicts(rank=500)[4] == "does not hold"


def test_claims_without_their_tables_say_not_run_and_the_text_fits():
    table, *_ = claim_tables()
    claims = scorecard.claims(table, rules="kit")
    assert list(claims.verdict) == ["not run"] * 5
    assert set(claims.rule) == set(scorecard.CLAIM_RULES.values())
    assert set(scorecard.claims(table).rule) == set(scorecard.REFEREE_RULES.values())  # the default
    text = scorecard.claims_text(scorecard.claims(*claim_tables(), rules="kit"))
    assert text.count("HOLDS") == 4 and all(len(line) <= 100 for line in text.splitlines())


def test_committed_claims_of_both_models():
    """The verdicts the README and notebook 02 state, from the committed tables."""
    for name in ("gemma3-270m", "qwen2.5-coder-1.5b"):
        claims = scorecard.stored_claims(name)
        assert list(claims.verdict) == ["holds", "does not hold", "holds", "holds", "partly"], name
        assert claims.rule.tolist() == [scorecard.REFEREE_RULES[c] for c in claims.claim]  # the referee's rules


def test_a_referees_rules():
    """rules="referee": the depth band only (no "partly" for a middle layer outside it), a majority of the five
    conflict pairs raised (exact p with Holm), and task words counted against the control's."""
    table, episodes, per_layer, geometry, pairs, vocab = claim_tables(best=11)  # depth 0.61: the kit's "partly"
    p = {i: 0.001 if i < 3 else 0.5 for i in range(5)}
    pairs["change_b_p"] = [p[int(a[1:])] for a in pairs.task_a]
    pairs["change_b"] = [0.4 if m == "ICL + theta of B" else np.nan for m in pairs.method]
    words = pd.DataFrame({"task": table.task, "task_share": [0.4, 0.3, 0.0], "control_share": [0.1, 0.1, 0.05],
                          "dummy_answer_median_rank": 3.0, "query_answer_median_rank": 200.0})
    kit = scorecard.claims(table, episodes, per_layer, geometry, pairs, vocab, rules="kit").set_index("claim").verdict
    ref = scorecard.claims(table, episodes, per_layer, geometry, pairs, vocab, rules="referee",
                           task_words=words).set_index("claim")
    assert kit["best layer in the middle"] == "partly" and ref.verdict["best layer in the middle"] == "does not hold"
    assert ref.verdict["θ(B) overrides demos of A"] == "holds"  # 3 of 5, each 0.001 * 5 after Holm at most
    assert ref.verdict["θ through the unembedding shows task tokens"] == "holds"  # 2 of 3 tasks beat the control
    assert "best layer + 2" in ref.rule["θ through the unembedding shows task tokens"]
    pairs["change_b_p"] = [0.001 if a in ("a0", "a1") else 0.5 for a in pairs.task_a]  # 2 of 5: no majority
    ref = scorecard.claims(table, episodes, per_layer, geometry, pairs, vocab, rules="referee").set_index("claim")
    assert ref.verdict["θ(B) overrides demos of A"] == "does not hold"
    assert ref.verdict["θ through the unembedding shows task tokens"] == "not run"
    card = scorecard.scorecard(results(), paper_model=scorecard.CLOSEST_MODEL)
    acc = card[card.section == "accuracy"].set_index(["task", "metric"])
    assert acc.loc[("next_letter", "tv"), "paper_mean"] == pytest.approx(MEAN_TV["next_letter"])
    assert acc.loc[("next_letter", "tv"), "paper_model"] == "Pythia 2.8B"
    with pytest.raises(ValueError, match="unknown rules"):
        scorecard.claims(table, rules="lenient")
    text = scorecard.claims(table, episodes, per_layer, geometry, pairs, vocab, rules="referee")
    assert "Rule: holds" in scorecard.claims_text(text, with_rules=True)  # the referee's scorecard prints its rules
    assert "Rule:" not in scorecard.claims_text(text, with_rules=False)


def test_the_scorecards_means_carry_the_runs_own_intervals():
    """The scorecard's means and TV/ICL, and claim 1's numbers, are `experiments.summarize`'s: the bootstrap over
    the main seed's queries (the committed run keeps five seeds in its episode table)."""
    from tv_utils import store
    from tv_utils.experiments import summarize

    results = store.precomputed("reproduce_gemma3-270m_results")
    episodes = store.precomputed("reproduce_gemma3-270m_episodes")
    assert episodes.seed.nunique() == 5
    means = summarize(results, episodes).set_index("category").loc["all"]
    card = scorecard.scorecard(results, episodes=episodes)
    for metric in ("baseline", "icl", "tv", "tv_over_icl"):
        got = row(card, "summary", "mean over tasks", metric)
        assert (got.ours_lo, got.ours_hi) == pytest.approx((means[f"{metric}_lo"], means[f"{metric}_hi"]))
    evidence = scorecard.claims(results, episodes).set_index("claim").evidence["TV ≈ ICL ≫ baseline"]
    assert f"TV/ICL {means.tv_over_icl:.2f} [{means.tv_over_icl_lo:.2f}, {means.tv_over_icl_hi:.2f}]" in evidence
