"""The paper's protocol and the uncertainty of its numbers, in one place.

Settings: k = 5 demonstrations, 50 dev and 50 test episodes per task, theta averaged over 2 dummy queries,
a seed that draws the queries, demonstrations and dummies. Three settings say whose conventions are followed,
each "paper" (the official code, roeehendel/icl_task_vectors: the default) or "kit" (`VARIANTS`; `KIT` has all
three, for the analyses not yet on the paper's conventions and to measure each departure):
- `prompts`: the spacing of the prompts (`prompts.usable_task`);
- `sampling`: how queries and dummies are drawn (`tasks.sample_episodes`);
- `scoring`: what counts as a hit (`score`): the kit's comparison of the greedy token's text with the answer's
  first token (`prompts.hits`), or the official string rules (`prompts.paper_hits`).
The layer is chosen on dev (the first layer with the top dev accuracy, the paper's rule) and accuracy is reported
on test.

Uncertainty, 95% everywhere. The unit of evidence is the query: episodes that ask the same query are not
independent (a model that knows `f -> g` gets it right in every episode that asks it), so wherever a table's
episodes repeat queries, intervals resample queries with their episodes (a cluster bootstrap), and the number of
distinct queries stands beside every accuracy:
- one accuracy: Wilson score interval when every episode asks its own query; else the percentile bootstrap over
  queries (`query_interval`), and at 0 or 1, where every resample agrees, Wilson over the distinct queries;
- a mean over tasks, or the TV/ICL ratio of means: percentile bootstrap, resampling queries (or episodes, in
  tables without queries) within each task;
- two methods on the same episodes (`compare(..., exact=True)`, reproduce's tables): the exact McNemar test on
  the discordant episodes, Holm's correction over the tasks compared, and the difference's interval by the same
  bootstrap over queries; a verdict is "better" or "worse" only where the Holm-corrected p < 0.05, else "no
  detectable difference". (The analyses not yet on the paper protocol still use `paired`: the score test with
  Tango's interval, verdicts at the uncorrected p.)
- the chosen layer: the share of bootstrap resamples of the dev episodes that pick each layer.
Every resample is drawn from a generator seeded by its label, so the same data give the same bytes.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["accuracy", "ALPHA", "best_mean_layer", "best_of", "compare", "difference_interval", "episode_hits",
           "episode_table", "holm", "INTERVALS", "KIT", "layer_stability", "main_seed", "mcnemar_exact",
           "mean_interval", "mean_of_proportions", "N_BOOT", "N_BOOT_LAYER", "newcombe", "paired", "PAPER",
           "Protocol", "PROTOCOLS", "query_interval", "ratio_interval", "score", "tango", "tie_layers", "tie_span",
           "VARIANTS", "verdict", "VERDICTS", "WIDE_TIE", "wilson", "with_intervals", "with_query_intervals", "Z95"]

Z95 = 1.959963984540054  # two-sided 95% normal quantile
N_BOOT = 2000  # bootstrap resamples for intervals of means and ratios
N_BOOT_LAYER = 1000  # resamples of the dev episodes for the stability of the chosen layer
ALPHA = 0.05
VERDICTS = ("better", "worse", "no detectable difference")
INTERVALS = ("95%: per task, a bootstrap over queries where episodes repeat them (Wilson where they don't, and "
             "over the distinct queries at 0 and 1); means and TV/ICL, the same bootstrap within tasks; paired "
             "comparisons (TV vs ICL): exact McNemar, Holm-corrected over the tasks, verdicts at p < 0.05")
VARIANTS = ("kit", "paper")  # whose conventions each of prompts, sampling and scoring follows


@dataclass(frozen=True)
class Protocol:
    k: int = 5  # demonstrations per episode
    n_dev: int = 50  # episodes that choose the layer
    n_test: int = 50  # episodes that report accuracy
    n_dummies: int = 2  # dummy queries theta is averaged over
    seed: int = 0  # draws queries, demonstrations and dummies (and the dev/test split of the queries)
    prompts: str = "paper"  # the official spacing per task type; "kit": `a-> b` where answers keep their space
    sampling: str = "paper"  # each query afresh from all inputs; "kit": disjoint dev/test queries (tasks.py)
    scoring: str = "paper"  # the decoded token against the answer string by task type (prompts.paper_hits);
    # "kit": the greedy token against the answer's first token (prompts.hits)

    def __post_init__(self):
        for name in ("prompts", "sampling", "scoring"):
            if getattr(self, name) not in VARIANTS:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid: {', '.join(VARIANTS)}")

    @property
    def variant(self) -> str:
        """"paper" or "kit" when all three conventions are one's, else "mixed"."""
        used = {self.prompts, self.sampling, self.scoring}
        return used.pop() if len(used) == 1 else "mixed"


PAPER = Protocol()  # the official code's protocol: the paper's counts and conventions (the default)
KIT = Protocol(prompts="kit", sampling="kit", scoring="kit")  # the kit's conventions (README "Departures")
PROTOCOLS = {"paper": PAPER, "kit": KIT}


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


def score(model, task, episodes, predicted, target, scoring: str = "kit", fmt=None):
    """Hits of predicted ids ([n_episodes] or [n_episodes, n_layers]) of one task's episodes by the protocol's
    scoring: "kit" (`episode_hits` against the target tokens [n_episodes], and any further accepted answers) or
    "paper" (`prompts.paper_hits`, the official string rules). `task` is the usable task the episodes come from."""
    from .prompts import DEFAULT_FORMAT, accepted_ids, paper_hits

    if scoring == "paper":
        return paper_hits(model.tokenizer, task, episodes, predicted)
    accepted = accepted_ids(model.tokenizer, task, episodes, fmt or DEFAULT_FORMAT)
    return episode_hits(model, predicted, target[:, None] if predicted.ndim == 2 else target, accepted)


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


def newcombe(p1: float, n1: int, p2: float, n2: int, bounds1=None, bounds2=None) -> tuple[float, float]:
    """95% interval of p1 - p2 for two independent proportions (Newcombe's hybrid score): e.g. one task's accuracy
    in two runs on different episodes. It combines each proportion's own interval: `bounds1`/`bounds2` (lo, hi)
    when given (e.g. a table's interval by query), else Wilson's from n1/n2."""
    l1, u1 = wilson(round(p1 * n1), n1) if bounds1 is None else bounds1
    l2, u2 = wilson(round(p2 * n2), n2) if bounds2 is None else bounds2
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


def query_interval(hits, queries=None, label: str = "", n_boot: int = N_BOOT) -> tuple[float, float]:
    """95% interval of one accuracy whose episodes may repeat queries: Wilson when every episode asks its own query
    (or `queries` is None); else the percentile bootstrap that resamples queries with all their episodes, and at 0
    or 1 (every resample the same) Wilson over the distinct queries, as if each had been asked once."""
    hits = np.asarray(hits, dtype=float)
    if queries is None or len(set(queries)) == len(hits):
        return wilson(int(hits.sum()), len(hits))
    if hits.min() == hits.max():
        n = len(set(queries))
        return wilson(n * int(hits[0]), n)
    return _percentiles(_boot_means([hits], _rng("query", label), n_boot, queries_by_task=[queries])[0])


def _clusters(queries) -> tuple[np.ndarray, np.ndarray]:
    """Each episode's query as a code 0..q-1 (in order of first appearance), and each query's episode count."""
    codes, _ = pd.factorize(pd.Series(list(queries), dtype=object))
    return codes, np.bincount(codes)


def with_query_intervals(table: pd.DataFrame, columns, hits: dict, queries: dict, key: str = "task",
                         label: str = "") -> pd.DataFrame:
    """`table` with `<col>_lo`, `<col>_hi` after each accuracy column, from `query_interval` of the episodes behind
    each row: hits[(row's key, col)] and queries[row's key] (one query per episode), and `n_queries` (the distinct
    queries) after the last interval; `label` prefixes the resamples' seeds."""
    table = table.copy()
    for col in columns:
        bounds = [query_interval(hits[k, col], queries[k], f"{label}{k}/{col}") for k in table[key]]
        at = table.columns.get_loc(col) + 1
        table.insert(at, f"{col}_lo", [lo for lo, _ in bounds])
        table.insert(at + 1, f"{col}_hi", [hi for _, hi in bounds])
    table.insert(table.columns.get_loc(f"{columns[-1]}_hi") + 1, "n_queries",
                 [len(set(queries[k])) for k in table[key]])
    return table


def mean_of_proportions(accuracies, ns, z: float = Z95) -> tuple[float, float]:
    """Normal 95% interval of a mean of independent accuracies (tasks on their own episodes), from their binomial
    variances: the closed form of `mean_interval`'s bootstrap, for figures drawn from summary tables."""
    p, n = np.asarray(accuracies, dtype=float), np.asarray(ns, dtype=float)
    mean, se = p.mean(), math.sqrt((p * (1 - p) / n).sum()) / len(p)
    return max(0.0, mean - z * se), min(1.0, mean + z * se)


def mean_interval(hits_by_task, label: str = "", n_boot: int = N_BOOT, queries_by_task=None) -> tuple[float, float]:
    """95% bootstrap interval of the mean over tasks of per-task accuracy, resampling within each task its queries
    with their episodes (`queries_by_task`: one query per episode, per task) or, without them, its episodes
    (`hits_by_task`: one array of 0/1 per task)."""
    rng = _rng("mean", label)
    seeds = rng.integers(0, 2**32, size=len(hits_by_task)) if queries_by_task is not None else None
    return _percentiles(_boot_means(hits_by_task, rng, n_boot, seeds, queries_by_task).mean(0))


def ratio_interval(num_by_task, den_by_task, label: str = "", n_boot: int = N_BOOT,
                   queries_by_task=None) -> tuple[float, float]:
    """95% bootstrap interval of mean(num) / mean(den) over tasks, e.g. TV/ICL; both methods are scored on the
    same episodes, so each resample takes the same episodes (or queries, given `queries_by_task`) for both."""
    rng = _rng("ratio", label)
    seeds = rng.integers(0, 2**32, size=len(num_by_task))
    num = _boot_means(num_by_task, None, n_boot, seeds, queries_by_task).mean(0)
    den = _boot_means(den_by_task, None, n_boot, seeds, queries_by_task).mean(0)
    return _percentiles(num / np.where(den > 0, den, np.nan))


def difference_interval(a_by_task, b_by_task, queries_a, queries_b, paired: bool, label: str = "",
                        n_boot: int = N_BOOT) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """95% bootstrap intervals of mean(a) - mean(b), per task and for the mean over tasks, resampling each task's
    queries with their episodes. paired: a and b score the same episodes (same queries, in the same order), and
    each resample takes the same queries for both; else the two runs are resampled independently."""
    rng = _rng("difference", label)
    seeds_a = rng.integers(0, 2**32, size=len(a_by_task))
    seeds_b = seeds_a if paired else rng.integers(0, 2**32, size=len(a_by_task))
    diff = (_boot_means(a_by_task, None, n_boot, seeds_a, queries_a)
            - _boot_means(b_by_task, None, n_boot, seeds_b, queries_b))
    return [_percentiles(row) for row in diff], _percentiles(diff.mean(0))


def _boot_means(hits_by_task, rng, n_boot: int, seeds=None, queries_by_task=None) -> np.ndarray:
    """[n_tasks, n_boot] means of resampled episodes, or of resampled queries with their episodes; `seeds` (one
    per task) pairs two methods' resamples."""
    out = []
    for i, hits in enumerate(hits_by_task):
        hits = np.asarray(hits, dtype=float)
        gen = np.random.default_rng(seeds[i]) if seeds is not None else rng
        if queries_by_task is None:
            out.append(hits[gen.integers(0, len(hits), size=(n_boot, len(hits)))].mean(1))
            continue
        codes, counts = _clusters(queries_by_task[i])
        picks = gen.integers(0, len(counts), size=(n_boot, len(counts)))
        out.append(np.bincount(codes, weights=hits)[picks].sum(1) / counts[picks].sum(1))
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


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of wins against losses among the discordant episodes
    (p = 1 when there are none); exact where the score test's normal approximation fails, with few discordant."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


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


def compare(episodes: pd.DataFrame, a: str, b: str, by=("task",), exact: bool = False) -> pd.DataFrame:
    """Paired comparison of methods a and b per group of a tidy episode table (columns `method`, `episode`,
    `hit` and those in `by`): one row per group with the difference a - b, its 95% interval, p, Holm-adjusted p
    over the groups, and the verdict.

    exact=False (`paired`): McNemar's score test, Tango's interval, the verdict at the uncorrected p. exact=True:
    the exact McNemar test, the verdict at the Holm-adjusted p, and, where the table has a `query` column, the
    interval from a bootstrap over queries (reproduce's tables; the other analyses move to it with the paper
    protocol)."""
    by = list(by)
    index = [*by, "episode", *(["query"] if exact and "query" in episodes else [])]
    wide = episodes[episodes.method.isin([a, b])].pivot_table(index=index, columns="method", values="hit",
                                                              sort=False)
    rows = []
    for key, group in wide.groupby(level=by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = paired(group[a].to_numpy(), group[b].to_numpy())
        if exact:
            x, y = group[a].to_numpy().astype(bool), group[b].to_numpy().astype(bool)
            row["p_value"] = mcnemar_exact(int((x & ~y).sum()), int((~x & y).sum()))
            if "query" in index:
                row["diff_lo"], row["diff_hi"] = _paired_query_interval(
                    x, y, group.index.get_level_values("query"), "/".join(map(str, key)))
        rows.append({**dict(zip(by, key)), "a": a, "b": b, "n": len(group), **row})
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table.p_value)
    if exact:
        table["verdict"] = [verdict(d, p) for d, p in zip(table["diff"], table.p_holm)]
    return table


def _paired_query_interval(a, b, queries, label: str, n_boot: int = N_BOOT) -> tuple[float, float]:
    """95% percentile bootstrap of mean(a) - mean(b) resampling queries with their episodes; Tango's interval when
    every episode asks its own query, and, where every episode's difference is the same (every resample agrees),
    Tango's over the distinct queries, as if each had been asked once."""
    if len(set(queries)) == len(a):
        return tango(int((a & ~b).sum()), int((~a & b).sum()), len(a))
    diff = a.astype(float) - b.astype(float)
    if diff.min() == diff.max():
        n = len(set(queries))
        return tango(n * int(diff[0] > 0), n * int(diff[0] < 0), n)
    return _percentiles(_boot_means([diff], _rng("paired", label), n_boot, queries_by_task=[queries])[0])


def main_seed(episodes: pd.DataFrame) -> pd.DataFrame:
    """The episodes of a run's main seed, the first in its table: the one its results tables report."""
    return episodes[episodes.seed == episodes.seed.iloc[0]] if "seed" in episodes else episodes


def episode_table(task: str, split: str, method: str, hits, layers=None, per_episode=None, per_cell=None,
                  **keys) -> pd.DataFrame:
    """One tidy block of per-episode hits: rows (task, split, method, layer, episode, hit) for hits of shape
    [n_episodes] (at one layer, or none: layer empty) or [n_episodes, len(layers)] (one column per layer);
    `keys` adds constant columns first (e.g. seed=0); `per_episode` ({name: n values}, e.g. the query) columns
    before the hit, `per_cell` ({name: values of hits' shape}, e.g. the predicted token) after it."""
    hits = np.asarray(hits, dtype=int)
    n = hits.shape[0]
    if hits.ndim == 1:
        hits, layers = hits[:, None], [layers]
    table = {**keys, "task": task, "split": split, "method": method,
             "layer": pd.array(list(layers) * n, dtype="Int64"), "episode": np.repeat(np.arange(n), len(layers))}
    table |= {name: np.repeat(np.asarray(values, dtype=object), len(layers))
              for name, values in (per_episode or {}).items()}
    table["hit"] = hits.reshape(-1)
    table |= {name: np.asarray(values).reshape(-1) for name, values in (per_cell or {}).items()}
    return pd.DataFrame(table)
