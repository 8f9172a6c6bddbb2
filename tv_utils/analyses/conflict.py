"""Conflicting tasks (paper Table 2): demonstrations of task A with the task vector of task B patched in;
which task's answers does the model give?"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from .. import engine, store
from ..experiments import prepare_split
from ..protocol import PAPER, Protocol, accuracy, best_of, compare, episode_hits, episode_table, with_intervals
from ..models import Model
from ..prompts import DEFAULT_FORMAT, PromptFormat, answer_token_ids
from ..tasks import TASK_NAMES, Episode, get_task, make_task, sample_episodes

PAPER_CONFLICTS = (
    ("next_letter", "to_upper"),
    ("list_last", "list_first"),
    ("prev_letter", "next_letter"),
    ("present_simple_past_simple", "present_simple_gerund"),
    ("en_es", "en_fr"),
)


def shared_queries(a: str, b: str, protocol: Protocol, n: int) -> list[Episode]:
    """Episodes of task A whose query input also has an answer under task B (so both can be scored)."""
    task_a, task_b = get_task(a), get_task(b)
    b_answers = dict(task_b.pairs)
    shared = [(x, y) for x, y in task_a.pairs if x in b_answers]
    if len(shared) < protocol.k + protocol.n_dummies + 1:
        raise ValueError(f"tasks {a!r} and {b!r} share only {len(shared)} inputs; pick tasks over the same inputs, "
                         f"e.g. {', '.join(f'{p}/{q}' for p, q in PAPER_CONFLICTS)}")
    return sample_episodes(make_task(a, shared, task_a.category), n, protocol.k, protocol.n_dummies, "test",
                           protocol.seed)


def conflict_partners(task_a: str, min_shared: int = 8) -> list[str]:
    """Tasks that share at least `min_shared` inputs with task_a (so demos of A can be scored on B's answers)."""
    inputs = {x for x, _ in get_task(task_a).pairs}
    return [b for b in TASK_NAMES if b != task_a and len(inputs & {x for x, _ in get_task(b).pairs}) >= min_shared]


def followed_task(table: pd.DataFrame, task_a: str, task_b: str) -> str:
    """The task whose answers the model gives with θ(B) patched over demonstrations of A (the higher accuracy
    in the "ICL + theta of B" row; A on a tie)."""
    row = table[(table.task_a == task_a) & (table.task_b == task_b) & (table.method == CONFLICT)].iloc[0]
    return task_b if row.acc_b > row.acc_a else task_a


def conflict_hits(model: Model, pairs=PAPER_CONFLICTS, n: int = 50, layer: int | None = None,
                  protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT) -> pd.DataFrame:
    """Every episode of demonstrations of A, without and with theta(B) patched in, scored on A's and on B's
    answers: a tidy table (task_a, task_b, method, layer, episode, scored_on, hit).

    theta(B) comes from episodes of B; the layer is B's best dev layer unless given."""
    blocks = []
    for a, b in pairs:
        for name in (a, b):
            if name not in TASK_NAMES:
                raise KeyError(f"unknown task {name!r} in pair ({a}, {b}); valid tasks: {', '.join(TASK_NAMES)}")
        episodes = shared_queries(a, b, protocol, n)
        answers_b = dict(get_task(b).pairs)
        tok = model.tokenizer
        target_a = torch.tensor([answer_token_ids(tok, ep.query[1], fmt)[0] for ep in episodes])
        target_b = torch.tensor([answer_token_ids(tok, answers_b[ep.query[0]], fmt)[0] for ep in episodes])
        b_split = prepare_split(model, b, "dev", n, protocol, fmt, icl=False)
        if layer is None:
            acc = accuracy(model, engine.layer_sweep(model, b_split.queries, b_split.theta), b_split.target[:, None], 0)
            use_layer = best_of(list(range(model.n_layers)), acc)
        else:
            use_layer = model.check_layer(layer)
        icl = model.encode([fmt.episode_icl(ep) for ep in episodes])
        regular = engine.next_tokens(model, icl).cpu()
        conflict = engine.layer_sweep(model, icl, b_split.theta, [use_layer])[:, 0].cpu()
        for method, pred in ((REGULAR, regular), (CONFLICT, conflict)):
            for scored_on, target in (("A", target_a), ("B", target_b)):
                blocks.append(episode_table(f"{a}:{b}", "test", method, episode_hits(model, pred, target).numpy(),
                                            use_layer, task_a=a, task_b=b, scored_on=scored_on))
    return pd.concat(blocks, ignore_index=True).drop(columns=["task", "split"])


REGULAR, CONFLICT = "ICL (demos of A)", "ICL + theta of B"


def conflict_table(hits: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 2 from `conflict_hits`: accuracy on A's and B's answers per pair and method with 95% Wilson
    intervals; the conflict row also gives, for A and for B, its change against plain ICL on the same
    episodes (paired bootstrap interval, exact McNemar p, verdict)."""
    keys = ["task_a", "task_b", "method", "layer"]
    wide = hits.pivot_table(index=[*keys, "episode"], columns="scored_on", values="hit", sort=False).reset_index()
    table = wide.groupby(keys, sort=False).agg(n=("episode", "size"), acc_a=("A", "mean"), acc_b=("B", "mean"))
    table = with_intervals(table.reset_index(), ["acc_a", "acc_b"], "n")
    changes = compare(hits.assign(task=hits.task_a + ":" + hits.task_b), CONFLICT, REGULAR, by=("task", "scored_on"))
    for scored_on in ("A", "B"):
        change = changes[changes.scored_on == scored_on].set_index("task")
        pair = table.task_a + ":" + table.task_b
        at = table.method == CONFLICT
        col = f"change_{scored_on.lower()}"
        for suffix, source in (("", "diff"), ("_lo", "diff_lo"), ("_hi", "diff_hi"), ("_p", "p_value"),
                               ("_verdict", "verdict")):
            table.loc[at, col + suffix] = pair[at].map(change[source])
    table.insert(0, "model", hits.attrs.get("model", ""))
    return table


def conflicting_tasks(model: Model, pairs=PAPER_CONFLICTS, n: int = 50, layer: int | None = None,
                      protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT) -> pd.DataFrame:
    """Demonstrations of A with theta(B) patched in: accuracy on A's and B's answers (paper Table 2), with
    intervals and the paired change against plain ICL (`conflict_table`)."""
    return conflict_table(_named(conflict_hits(model, pairs, n, layer, protocol, fmt), model))


def _named(hits: pd.DataFrame, model: Model) -> pd.DataFrame:
    hits.attrs["model"] = model.name
    return hits


def run(model: Model, pairs=PAPER_CONFLICTS, n: int = 50, layer: int | None = None,
        out_dir: str | Path | None = None, figures: bool = True) -> pd.DataFrame:
    """Writes conflict_<model>.csv (the table), conflict_<model>_episodes.csv (every hit) and, with `figures`,
    the bar chart; returns the table."""
    from .. import plots

    hits = _named(conflict_hits(model, pairs, n=n, layer=layer), model)
    table = conflict_table(hits)
    stem = store.results_stem("conflict", model.name, out_dir)
    store.save_table(table, f"{stem}.csv")
    store.save_table(hits, f"{stem}_episodes.csv")
    if figures:
        store.save_figure(plots.conflict_bars(table), stem)
    return table
