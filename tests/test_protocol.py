"""The protocol's statistics against values worked out by hand or by brute force (no model needed)."""

import math

import numpy as np
import pandas as pd
import pytest

from tv_utils import protocol as P

pytestmark = pytest.mark.tiny


def test_wilson_matches_the_textbook_values():
    assert P.wilson(25, 50) == pytest.approx((0.3664, 0.6336), abs=1e-4)  # ±0.14 at p = 0.5, as the README says
    assert P.wilson(0, 50) == (0.0, pytest.approx(0.0713, abs=1e-4))  # exact 0 at the lower end, not 1e-17
    lo, hi = P.wilson(50, 50)
    assert hi == 1.0 and lo == pytest.approx(0.9287, abs=1e-4)
    assert all(math.isnan(v) for v in P.wilson(0, 0))


def test_intervals_are_placed_after_their_column():
    table = P.with_intervals(pd.DataFrame({"task": ["a", "b"], "tv": [0.5, 1.0], "n": [50, 10]}), ["tv"], "n")
    assert list(table.columns) == ["task", "tv", "tv_lo", "tv_hi", "n"]
    assert table.tv_hi.tolist() == [pytest.approx(0.6336, abs=1e-4), 1.0]


def test_mcnemar_is_the_score_test_on_discordant_pairs():
    a, b = [1] * 10 + [0] * 40, [0] * 50  # 10 discordant episodes, all one way: z = 10 / sqrt(10)
    assert P.paired(a, b)["p_value"] == pytest.approx(math.erfc(math.sqrt(10) / math.sqrt(2)))
    assert P.paired(a, a)["p_value"] == 1.0  # no discordant pair: no evidence
    assert P.paired([1, 1, 1, 0, 0], [0, 0, 1, 1, 0])["p_value"] == pytest.approx(math.erfc(1 / math.sqrt(6)))


def test_paired_verdicts_follow_the_test():
    better = P.paired([1] * 20 + [0] * 30, [0] * 50)
    assert better["verdict"] == "better" and better["diff"] == 0.4 and better["diff_lo"] > 0
    same = P.paired([1, 0] * 25, [0, 1] * 25)
    assert same["verdict"] == "no detectable difference" and same["diff_lo"] < 0 < same["diff_hi"]
    assert P.paired([0] * 50, [1] * 12 + [0] * 38)["verdict"] == "worse"
    with pytest.raises(ValueError, match="equal-length"):
        P.paired([1, 0], [1])


def test_the_paired_interval_excludes_zero_exactly_when_the_test_rejects():
    for wins in range(0, 26):
        for losses in range(0, 26 - wins):
            a = [1] * wins + [0] * losses + [1] * 5 + [0] * (45 - wins - losses)
            b = [0] * wins + [1] * losses + [1] * 5 + [0] * (45 - wins - losses)
            r = P.paired(a, b)
            assert -1 <= r["diff_lo"] < r["diff"] < r["diff_hi"] <= 1, (wins, losses, r)  # never an end at the estimate
            assert (r["p_value"] < 0.05) == (r["diff_lo"] > 0 or r["diff_hi"] < 0), (wins, losses, r)


def _score_by_brute_force(wins, losses, n, delta):
    """Tango's score statistic with the restricted maximum-likelihood p(a wrong, b right) found on a fine grid."""
    ties = n - wins - losses
    lo, hi = max(0.0, -delta), (1 - delta) / 2  # p01 = q, p10 = q + delta, p_same = 1 - 2q - delta, all > 0
    q = np.linspace(lo, hi, 200_001)[1:-1]
    loglik = wins * np.log(q + delta) + losses * np.log(q) + ties * np.log(1 - 2 * q - delta)
    q = q[np.argmax(loglik)]
    return (wins - losses - n * delta) / math.sqrt(n * (2 * q + delta * (1 - delta)))


@pytest.mark.parametrize("wins, losses, n", [(12, 2, 44), (28, 0, 50), (1, 7, 21), (3, 3, 50)])
def test_tango_interval_ends_where_the_score_statistic_is_1_96(wins, losses, n):
    lo, hi = P.tango(wins, losses, n)
    assert _score_by_brute_force(wins, losses, n, lo) == pytest.approx(P.Z95, abs=2e-3)
    assert _score_by_brute_force(wins, losses, n, hi) == pytest.approx(-P.Z95, abs=2e-3)


def test_bootstrap_intervals_are_seeded_and_cover_the_mean():
    rng = np.random.default_rng(1)
    hits = [rng.random(50) < p for p in (0.2, 0.5, 0.9)]
    lo, hi = P.mean_interval(hits, "t")
    assert lo < np.mean([h.mean() for h in hits]) < hi and P.mean_interval(hits, "t") == (lo, hi)
    closed = P.mean_of_proportions([h.mean() for h in hits], [50] * 3)  # the closed form is close to it
    assert closed == pytest.approx((lo, hi), abs=0.03)
    r_lo, r_hi = P.ratio_interval(hits[:2], hits[1:], "t")
    assert r_lo < (hits[0].mean() + hits[1].mean()) / (hits[1].mean() + hits[2].mean()) < r_hi


def test_holm_adjusts_in_input_order():
    assert P.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_ties_and_layer_stability():
    assert P.tie_layers([0, 1, 2, 3], [0.5, 0.9, 0.88, 0.7], 50) == [1, 2]  # 0.88 is one episode below 0.9
    assert P.best_of([0, 1, 2, 3], [0.5, 0.9, 0.9, 0.7]) == 1  # the paper's rule: the first maximum
    assert P.tie_span("11") == 1 and P.tie_span("2 5 7") == 6 and P.tie_span(11) == 1  # first to last layer
    clear = np.zeros((50, 4), dtype=int)
    clear[:, 2] = 1  # layer 2 right on every episode: every resample chooses it
    assert P.layer_stability(clear, [0, 1, 2, 3]) == {2: 1.0}
    coin = np.array([[1, 0], [0, 1]] * 25)  # two layers equally good: about half the resamples each
    shares = P.layer_stability(coin, [5, 6])
    assert set(shares) == {5, 6} and sum(shares.values()) == pytest.approx(1) and 0.3 < shares[5] < 0.8


def test_compare_and_episode_tables_are_tidy():
    rows = pd.concat([P.episode_table("t", "test", "tv", [1] * 30 + [0] * 20, 9),
                      P.episode_table("t", "test", "icl", [0] * 50),
                      P.episode_table("t", "dev", "tv", np.ones((50, 3)), [0, 1, 2])], ignore_index=True)
    assert list(rows.columns) == ["task", "split", "method", "layer", "episode", "hit"]
    assert len(rows) == 50 + 50 + 150 and rows.layer.isna().sum() == 50
    table = P.compare(rows[rows.split == "test"], "tv", "icl")
    assert table.loc[0, ["task", "n", "verdict"]].tolist() == ["t", 50, "better"] and table.loc[0, "diff"] == 0.6


def test_newcombe_interval_of_two_runs():
    lo, hi = P.newcombe(0.5, 50, 0.5, 50)
    assert lo == pytest.approx(-hi) and 0.15 < hi < 0.25
    wider = P.newcombe(0.5, 50, 0.5, 50, (0.2, 0.8), (0.2, 0.8))  # each run's own (e.g. query-clustered) interval
    assert wider == pytest.approx((-math.sqrt(0.18), math.sqrt(0.18))) and wider[1] > hi


def test_the_main_seed_alone_gives_the_summary_intervals():
    """A multi-seed episode table (as `reproduce --seeds` stores it) summarizes as its first seed: an interval
    built from every seed's episodes would not contain the first seed's means, which the results report."""
    from tv_utils.experiments import summarize

    rng = np.random.default_rng(0)
    results = pd.DataFrame({"task": ["a", "b"], "category": "x", "baseline": 0.1, "icl": 0.9, "tv": 0.5})
    episodes = pd.concat([pd.DataFrame({"task": t, "split": "test", "method": m, "episode": range(50),
                                        "hit": rng.random(50) < p, "seed": seed})
                          for seed, shift in ((3, 0.0), (4, 0.3)) for t in ("a", "b")
                          for m, p in (("baseline", 0.1), ("icl", 0.9 - shift), ("tv", 0.5 + shift))],
                         ignore_index=True)
    assert set(P.main_seed(episodes).seed) == {3} and P.main_seed(episodes.drop(columns="seed")).equals(
        episodes.drop(columns="seed"))
    assert summarize(results, episodes).equals(summarize(results, P.main_seed(episodes)))
