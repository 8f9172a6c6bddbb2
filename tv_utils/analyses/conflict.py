"""Conflicting tasks (paper Table 2): demonstrations of task A with the task vector of task B patched in;
which task's answers does the model give?"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from .. import engine, store
from ..experiments import PAPER, Protocol, accuracy, best_of, prepare_split
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
    row = table[(table.task_a == task_a) & (table.task_b == task_b) & (table.method == "ICL + theta of B")].iloc[0]
    return task_b if row.acc_b > row.acc_a else task_a


def conflicting_tasks(model: Model, pairs=PAPER_CONFLICTS, n: int = 50, layer: int | None = None,
                      protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT) -> pd.DataFrame:
    """Demonstrations of A with theta(B) patched in: accuracy on A's and B's answers (paper Table 2).

    theta(B) comes from episodes of B; the layer is B's best dev layer unless given.
    """
    rows = []
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
        for method, pred in (("ICL (demos of A)", regular), ("ICL + theta of B", conflict)):
            rows.append({"model": model.name, "task_a": a, "task_b": b, "method": method, "layer": use_layer,
                         "acc_a": accuracy(model, pred, target_a),
                         "acc_b": accuracy(model, pred, target_b)})
    return pd.DataFrame(rows)


def run(model: Model, pairs=PAPER_CONFLICTS, n: int = 50, layer: int | None = None,
        out_dir: str | Path | None = None, figures: bool = True) -> pd.DataFrame:
    """`conflicting_tasks` written as conflict_<model>.csv and, with `figures`, its bar chart; returns the table."""
    from .. import plots

    table = conflicting_tasks(model, pairs, n=n, layer=layer)
    stem = store.results_stem("conflict", model.name, out_dir)
    store.save_table(table, f"{stem}.csv")
    if figures:
        store.save_figure(plots.conflict_bars(table), stem)
    return table
