"""The paper's protocol and the uncertainty of its numbers, in one place.

Settings: k = 5 demonstrations, 50 dev and 50 test episodes per task, theta averaged over 2 dummy queries,
a seed that draws the queries, demonstrations and dummies. Scoring: a hit is the greedy next token equal to
the answer's first token (`prompts.hits`; to that of any accepted answer, for a user's task that accepts several).
The layer is chosen on dev (the first layer with the top dev accuracy, the paper's rule) and accuracy is reported
on test.

Uncertainty, 95% everywhere:
- one accuracy (k hits of n episodes): Wilson score interval;
- a mean over tasks, or the TV/ICL ratio of means: percentile bootstrap, resampling episodes within each task;
- two methods on the same episodes: McNemar's test and Tango's score interval of the difference, which
  inverts it (`paired`); a verdict is "better" or "worse" only at p < 0.05, else "no detectable
  difference" (over 18 tasks, about one false verdict in twenty comparisons is expected: `holm` corrects);
- the chosen layer: the share of bootstrap resamples of the dev episodes that pick each layer.
Every resample is drawn from a generator seeded by its label, so the same data give the same bytes.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["accuracy", "ALPHA", "best_mean_layer", "best_of", "compare", "episode_hits", "episode_table", "holm",
           "INTERVALS", "layer_stability", "main_seed", "mean_interval", "mean_of_proportions", "N_BOOT",
           "N_BOOT_LAYER", "newcombe", "paired", "PAPER", "Protocol", "ratio_interval", "tango", "tie_layers",
           "tie_span", "verdict", "VERDICTS", "WIDE_TIE", "wilson", "with_intervals", "Z95"]

Z95 = 1.959963984540054  # two-sided 95% normal quantile
N_BOOT = 2000  # bootstrap resamples for intervals of means and ratios
N_BOOT_LAYER = 1000  # resamples of the dev episodes for the stability of the chosen layer
ALPHA = 0.05
VERDICTS = ("better", "worse", "no detectable difference")
INTERVALS = ("95%: Wilson per task; bootstrap over episodes within tasks for means and TV/ICL; paired "
             "comparisons (TV vs ICL): McNemar score test at p < 0.05 with Tango's interval")


@dataclass(frozen=True)
class Protocol:
    k: int = 5  # demonstrations per episode
    n_dev: int = 50  # episodes that choose the layer
    n_test: int = 50  # episodes that report accuracy
    n_dummies: int = 2  # dummy queries theta is averaged over
    seed: int = 0  # draws queries, demonstrations and dummies (and the dev/test split of the queries)


PAPER = Protocol()


# ----- scoring and the choice of layer -----

def accuracy(model, predicted, target, dim=None, accepted=None):
    """Share of predictions matching their targets (see `prompts.hits`); per column when dim=0."""
    correct = episode_hits(model, predicted, target, accepted).double()  # 7/50 is 0.14, not float32's 0.14000000059
    return correct.mean().item() if dim is None else correct.mean(dim).tolist()


def episode_hits(model, predicted, target, accepted=None):
    """Hit (True) or miss per prediction, as a bool tensor of `predicted`'s shape (target broadcasts); `accepted`:
    each target's further accepted answer tokens, for tasks with several answers (`prompts.accepted_ids`)."""
    from .prompts import hits

    return hits(model.tokenizer, predicted, target, accepted)


def best_of(layers, accuracy) -> int:
    """The first layer with the top accuracy (the paper's rule)."""
    return layers[max(range(len(layers)), key=lambda i: accuracy[i])]


def tie_layers(layers, accuracy, n: int) -> list[int]:
    """The layers within one episode (1/n) of the top accuracy: those the dev set cannot tell apart from the best."""
    top = max(accuracy)
    return [layer for layer, acc in zip(layers, accuracy) if acc >= top - 1 / n - 1e-12]


WIDE_TIE = 3  # a tie set spanning more layers than this is flagged: dev cannot locate the best layer


def tie_span(ties: str) -> int:
    """How many layers a tie set spans, first to last ("2 5 7" spans 6): wide spans mean a flat dev curve."""
    layers = [int(x) for x in str(ties).split()]
    return max(layers) - min(layers) + 1


def best_mean_layer(per_layer: pd.DataFrame) -> int:
    """The layer with the best dev accuracy averaged over the tasks of a per-layer table (the paper's single
    L for a model; per-task layers are `best_of` each task's curve)."""
    mean = per_layer.groupby("layer")["dev_acc"].mean()
    return int(best_of(list(mean.index), mean.tolist()))


def layer_stability(dev_hits, layers, label: str = "", n_boot: int = N_BOOT_LAYER) -> dict[int, float]:
    """How stable the chosen layer is: the share of bootstrap resamples of the dev episodes (rows of
    `dev_hits`, [n_episodes, n_layers]) whose first top layer is each layer; layers never chosen are left out."""
    hits = np.asarray(dev_hits, dtype=float)
    idx = _rng("layer", label).integers(0, len(hits), size=(n_boot, len(hits)))
    chosen = hits[idx].mean(1).argmax(1)  # argmax: the first maximum, as `best_of`
    counts = np.bincount(chosen, minlength=len(layers))
    return {int(layers[i]): round(c / n_boot, 4) for i, c in enumerate(counts) if c}


# ----- intervals -----

def wilson(successes, n, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (k of n); good at 0 and 1, where the normal interval collapses."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends (no 1e-17 from rounding)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def newcombe(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """95% interval of p1 - p2 for two independent proportions (Newcombe's hybrid score, from Wilson intervals):
    e.g. one task's accuracy in two runs on different episodes."""
    l1, u1 = wilson(round(p1 * n1), n1)
    l2, u2 = wilson(round(p2 * n2), n2)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def with_intervals(table: pd.DataFrame, columns, n) -> pd.DataFrame:
    """`table` with `<col>_lo` and `<col>_hi` (Wilson, 95%) placed after each accuracy column; `n` is the number
    of episodes behind each accuracy: a number, or the name of a column holding it."""
    table = table.copy()
    counts = table[n] if isinstance(n, str) else pd.Series(n, index=table.index)
    for col in columns:
        bounds = [wilson(round(acc * m), m) for acc, m in zip(table[col], counts)]
        at = table.columns.get_loc(col) + 1
        table.insert(at, f"{col}_lo", [lo for lo, _ in bounds])
        table.insert(at + 1, f"{col}_hi", [hi for _, hi in bounds])
    return table


def mean_of_proportions(accuracies, ns, z: float = Z95) -> tuple[float, float]:
    """Normal 95% interval of a mean of independent accuracies (tasks on their own episodes), from their binomial
    variances: the closed form of `mean_interval`'s bootstrap, for figures drawn from summary tables."""
    p, n = np.asarray(accuracies, dtype=float), np.asarray(ns, dtype=float)
    mean, se = p.mean(), math.sqrt((p * (1 - p) / n).sum()) / len(p)
    return max(0.0, mean - z * se), min(1.0, mean + z * se)


def mean_interval(hits_by_task, label: str = "", n_boot: int = N_BOOT) -> tuple[float, float]:
    """95% bootstrap interval of the mean over tasks of per-task accuracy, resampling episodes within each task
    (`hits_by_task`: one array of 0/1 per task)."""
    return _percentiles(_boot_means(hits_by_task, _rng("mean", label), n_boot).mean(0))


def ratio_interval(num_by_task, den_by_task, label: str = "", n_boot: int = N_BOOT) -> tuple[float, float]:
    """95% bootstrap interval of mean(num) / mean(den) over tasks, e.g. TV/ICL; both methods are scored on the
    same episodes, so each resample takes the same episodes for both."""
    rng = _rng("ratio", label)
    seeds = rng.integers(0, 2**32, size=len(num_by_task))
    num = _boot_means(num_by_task, None, n_boot, seeds).mean(0)
    den = _boot_means(den_by_task, None, n_boot, seeds).mean(0)
    return _percentiles(num / np.where(den > 0, den, np.nan))


def _boot_means(hits_by_task, rng, n_boot: int, seeds=None) -> np.ndarray:
    """[n_tasks, n_boot] means of resampled episodes; `seeds` (one per task) pairs two methods' resamples."""
    out = []
    for i, hits in enumerate(hits_by_task):
        hits = np.asarray(hits, dtype=float)
        gen = np.random.default_rng(seeds[i]) if seeds is not None else rng
        out.append(hits[gen.integers(0, len(hits), size=(n_boot, len(hits)))].mean(1))
    return np.array(out)


def _percentiles(values) -> tuple[float, float]:
    if np.isnan(values).all():  # e.g. a ratio whose denominator is 0 in every resample
        return math.nan, math.nan
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _rng(kind: str, label: str) -> np.random.Generator:
    """A generator seeded by what it resamples, so that intervals are the same bytes on every machine."""
    return np.random.default_rng(zlib.crc32(f"{kind}/{label}".encode()))


# ----- paired comparisons -----

def paired(a, b) -> dict:
    """Method a against method b on the same episodes: the difference of accuracies a - b, its 95% interval, the
    McNemar p-value and the verdict for a ("better", "worse", "no detectable difference").

    Only the discordant episodes (one method right, the other wrong) tell the methods apart. The test is
    McNemar's score test, z = (wins - losses) / sqrt(wins + losses), and the interval is Tango's score interval
    for a difference of paired proportions, which inverts that same test: the interval excludes 0 exactly
    when p < 0.05, so a verdict and its interval never disagree."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired comparison needs two equal-length lists of hits, got {a.shape} and {b.shape}")
    wins, losses, n = int((a & ~b).sum()), int((~a & b).sum()), len(a)
    z = (wins - losses) / math.sqrt(wins + losses) if wins + losses else 0.0
    p = math.erfc(abs(z) / math.sqrt(2))
    lo, hi = tango(wins, losses, n)
    return {"diff": (wins - losses) / n, "diff_lo": lo, "diff_hi": hi, "p_value": p,
            "verdict": verdict(wins - losses, p)}


def tango(wins: int, losses: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Tango's (1998) score interval of p(a right, b wrong) - p(a wrong, b right) from n paired episodes."""
    def score(delta: float) -> float:  # decreasing in delta; 0 at the estimate
        big_b = -wins - losses + (2 * n - wins + losses) * delta
        c = -losses * delta * (1 - delta)
        q = (math.sqrt(max(big_b * big_b - 8 * n * c, 0.0)) - big_b) / (4 * n)  # restricted MLE of p(a wrong, b right)
        var = n * (2 * q + delta * (1 - delta))
        top = wins - losses - n * delta
        return 0.0 if top == 0 else top / math.sqrt(var) if var > 0 else math.copysign(math.inf, top)

    def solve(target: float) -> float:
        lo, hi = -1.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if score(mid) > target else (lo, mid)
        return (lo + hi) / 2

    return solve(z), solve(-z)


def verdict(diff: float, p: float, alpha: float = ALPHA) -> str:
    if p >= alpha or diff == 0:
        return "no detectable difference"
    return "better" if diff > 0 else "worse"


def holm(p_values) -> list[float]:
    """Holm-adjusted p-values (family-wise error over the tasks compared), in the input order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]).clip(max=1.0)
    out = np.empty_like(p)
    out[order] = adjusted
    return out.tolist()


def compare(episodes: pd.DataFrame, a: str, b: str, by=("task",)) -> pd.DataFrame:
    """Paired comparison of methods a and b per group of a tidy episode table (columns `method`, `episode`,
    `hit` and those in `by`): one row per group with the difference a - b, its interval, p, Holm-adjusted p
    over the groups, and the verdict."""
    by = list(by)
    wide = episodes[episodes.method.isin([a, b])].pivot_table(index=[*by, "episode"], columns="method",
                                                              values="hit", sort=False)
    rows = []
    for key, group in wide.groupby(level=by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "a": a, "b": b, "n": len(group),
                     **paired(group[a].to_numpy(), group[b].to_numpy())})
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table.p_value)
    return table


def main_seed(episodes: pd.DataFrame) -> pd.DataFrame:
    """The episodes of a run's main seed, the first in its table: the one its results tables report."""
    return episodes[episodes.seed == episodes.seed.iloc[0]] if "seed" in episodes else episodes


def episode_table(task: str, split: str, method: str, hits, layers=None, **keys) -> pd.DataFrame:
    """One tidy block of per-episode hits: rows (task, split, method, layer, episode, hit) for hits of shape
    [n_episodes] (at one layer, or none: layer empty) or [n_episodes, len(layers)] (one column per layer);
    `keys` adds constant columns first (e.g. seed=0)."""
    hits = np.asarray(hits, dtype=int)
    n = hits.shape[0]
    if hits.ndim == 1:
        hits, layers = hits[:, None], [layers]
    return pd.DataFrame({**keys, "task": task, "split": split, "method": method,
                         "layer": pd.array(list(layers) * n, dtype="Int64"),
                         "episode": np.repeat(np.arange(n), len(layers)), "hit": hits.reshape(-1)})
