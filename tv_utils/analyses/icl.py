"""ICL and your own task: one ICL example with its accuracy (the ICL playground), and θ from pairs you type."""

from __future__ import annotations

import pandas as pd

from .. import engine
from ..experiments import encode_queries, sample_split
from ..protocol import Protocol, accuracy
from ..prompts import DEFAULT_FORMAT, usable_task
from ..tasks import Episode, make_task, parse_pairs
from .beyond import patch_shared


def icl_example(model, task, k: int = 5, n: int = 10) -> dict:
    """One ICL prompt of `task` with k demonstrations, the model's answer to it, and ICL vs zero-shot accuracy
    over n test episodes (what the ICL playground shows)."""
    _, episodes, target = sample_split(model, task, "test", n, Protocol(k=k), DEFAULT_FORMAT)
    icl = engine.next_tokens(model, model.encode([DEFAULT_FORMAT.episode_icl(ep) for ep in episodes]))
    base = engine.next_tokens(model, encode_queries(model, episodes, DEFAULT_FORMAT))  # no θ needed here
    ep = episodes[0]
    return {"prompt": DEFAULT_FORMAT.episode_icl(ep), "answer": model.decode_token(icl[0]),
            "expected": ep.query[1], "icl_accuracy": accuracy(model, icl, target),
            "zero_shot_accuracy": accuracy(model, base, target), "n": n}


def own_task_answers(model, pairs, queries, layer: int) -> tuple[pd.DataFrame, dict]:
    """Your own task: theta from `input -> output` pairs (text or a list of tuples), then each query answered
    zero-shot, with ICL, and with `x ->` + theta at `layer`. The last 2 pairs' inputs serve as the dummy
    queries x' (as in the paper, x' is not among the demonstrations); the other pairs are the demonstrations.

    Returns (table with one row per query, {"demos": ..., "dummies": ...}).
    """
    task = make_task("custom", parse_pairs(pairs) if isinstance(pairs, str) else pairs)
    if len(task.pairs) < 3:
        raise ValueError(f"give at least 3 pairs (demonstrations plus 2 dummy queries), got {len(task.pairs)}")
    queries = [q.strip() for q in (queries.split(",") if isinstance(queries, str) else queries) if q.strip()]
    if not queries:
        raise ValueError("type at least one query, separated by commas")
    model.check_layer(layer)
    demos, dummies = task.pairs[:-2], tuple(x for x, _ in task.pairs[-2:])
    spaced = usable_task(task, model.tokenizer)[0].spaced  # numbers on Gemma go without the space
    theta, _ = engine.episode_states(model, [Episode(demos, dummies, (dummies[0], ""), spaced=spaced)], icl=False)
    query_ids = model.encode([DEFAULT_FORMAT.query(q) for q in queries])
    tv = patch_shared(model, query_ids, theta[0, layer], layer)
    icl = engine.next_tokens(model, model.encode([DEFAULT_FORMAT.icl(demos, q, spaced) for q in queries]))
    zero = engine.next_tokens(model, query_ids)
    table = pd.DataFrame({"query": queries,
                          "zero-shot": [model.decode_token(i) for i in zero.tolist()],
                          "ICL": [model.decode_token(i) for i in icl.tolist()],
                          f"task vector (layer {layer})": [model.decode_token(i) for i in tv.tolist()]})
    return table, {"demos": demos, "dummies": dummies}
