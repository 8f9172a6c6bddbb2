"""ICL and your own task: one ICL example with its accuracy (the ICL playground), and θ from pairs you type.
The playground's episodes follow the kit's conventions (`protocol.KIT`), as its stored table (docs/protocol.md)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from .. import engine, store
from ..batches import pad_left
from ..experiments import encode_queries, sample_split
from ..protocol import KIT, accuracy
from ..prompts import DEFAULT_FORMAT, usable_task
from ..tasks import TASK_NAMES, make_task, parse_pairs

__all__ = ["EXAMPLE_FIELDS", "icl_example", "own_task_answers", "playground_file", "PLAYGROUND_KS", "PLAYGROUND_N",
           "playground_table", "run", "stored_examples"]

PLAYGROUND_KS = tuple(range(1, 11))  # the values of the playground's demonstrations slider
PLAYGROUND_N = 10  # the playground's episodes in the notebooks
EXAMPLE_FIELDS = ("prompt", "answer", "expected", "icl_accuracy", "zero_shot_accuracy", "n")


def icl_example(model, task, k: int = 5, n: int = 10) -> dict:
    """One ICL prompt of `task` with k demonstrations, the model's answer to it, and ICL vs zero-shot accuracy
    over n test episodes (what the ICL playground shows)."""
    _, episodes, target = sample_split(model, task, "test", n, replace(KIT, k=k), DEFAULT_FORMAT)
    icl = engine.next_tokens(model, model.encode([DEFAULT_FORMAT.episode_icl(ep) for ep in episodes]))
    base = engine.next_tokens(model, encode_queries(model, episodes, DEFAULT_FORMAT))  # no θ needed here
    ep = episodes[0]
    return {"prompt": DEFAULT_FORMAT.episode_icl(ep), "answer": model.decode_token(icl[0]),
            "expected": ep.query[1], "icl_accuracy": accuracy(model, icl, target),
            "zero_shot_accuracy": accuracy(model, base, target), "n": n}


def playground_table(model, tasks=TASK_NAMES, ks=PLAYGROUND_KS, n: int = PLAYGROUND_N,
                     progress: bool = False) -> pd.DataFrame:
    """Every setting of the ICL playground, computed once: `icl_example(model, task, k, n)` for each task and
    number of demonstrations, one row each (task, k, seed, then its fields). The widget shows a setting in this
    table without running the model; `stored_examples` reads it back."""
    from tqdm.auto import tqdm

    rows = []
    for task in tqdm(list(tasks), desc=f"ICL playground ({model.name})", unit="task", disable=not progress):
        for k in ks:
            rows.append({"task": task, "k": int(k), "seed": KIT.seed, **icl_example(model, task, int(k), n)})
    return pd.DataFrame(rows)[["task", "k", "n", "seed", *EXAMPLE_FIELDS[:-1]]]


def playground_file(model_name: str, folder: str | Path | None = None) -> Path:
    """Where `run` writes the playground table: <folder>/icl_<model>_playground.csv."""
    return store.suffixed(store.results_stem("icl", model_name, folder), "_playground.csv")


def stored_examples(model_name: str, n: int = PLAYGROUND_N) -> dict:
    """The stored playground settings of a model at n episodes (your results if you point at them, else the
    committed reference), {(task, k): icl_example's dict}; empty when there is no table for this model."""
    text = ["prompt", "answer", "expected"]
    table = store.precomputed(playground_file(model_name).name[:-len(".csv")], text=text)
    if table is None:
        return {}
    table = table[(table.n == n) & (table.seed == KIT.seed)]
    table = table.assign(**{c: table[c].fillna("") for c in text})  # an empty answer reads back as a missing value
    return {(row["task"], int(row["k"])): {**{c: row[c] for c in text},
                                          "icl_accuracy": float(row["icl_accuracy"]),
                                          "zero_shot_accuracy": float(row["zero_shot_accuracy"]), "n": int(row["n"])}
            for row in table.to_dict("records")}


def run(model, tasks=TASK_NAMES, n: int = PLAYGROUND_N, out_dir: str | Path | None = None) -> pd.DataFrame:
    """Writes icl_<model>_playground.csv (`playground_table`) and returns it."""
    table = playground_table(model, tasks, n=n, progress=True)
    store.save_table(table, playground_file(model.name, out_dir))
    return table


@torch.no_grad()
def own_task_answers(model, pairs, queries, layer: int, fmt=DEFAULT_FORMAT) -> tuple[pd.DataFrame, dict]:
    """Your own task: theta from `input -> output` pairs (text or a list of tuples), then each query answered
    zero-shot, with ICL, and with `x ->` + theta at `layer`. The last 2 pairs' inputs serve as the dummy
    queries x' (as in the paper, x' is not among the demonstrations); the other pairs are the demonstrations.

    Batched for a live widget: the demonstrations (shared by the dummy prompts and the queries' ICL prompts) run
    once, then one pass over the prompts' own tokens gives theta (mean over the dummies at `layer`) and the ICL
    answers; one pass over the queries, each twice, gives the zero-shot answers and, with theta written at
    `layer`, the task-vector answers; one product with the unembedding gives every answer.

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
    n, d = len(queries), len(dummies)
    seqs = model.encode([fmt.icl(demos, x, spaced) for x in (*dummies, *queries)])
    cut = engine.split_common_prefix(seqs)  # the demonstrations' tokens, common to every prompt
    prefix_mask, cache = engine.cached_prefix(model, [seqs[0][:cut]])
    cache.batch_repeat_interleave(len(seqs))
    batch = engine.suffix_batch(model, prefix_mask, [s[cut:] for s in seqs], len(seqs))
    icl_final, states, _ = engine.forward(model, batch, cache=cache, capture=True)
    theta = states[:d].mean(dim=0)[layer]  # as engine.episode_states: the mean over the dummy prompts
    query_ids = model.encode([fmt.query(q) for q in queries])
    patch = {layer: (torch.arange(n, 2 * n), theta.expand(n, -1))}  # the second copy of each query gets theta
    query_final, _, _ = engine.forward(model, pad_left(model, query_ids + query_ids), patch=patch)
    preds = engine.predict(model, torch.cat([icl_final[d:], query_final])).tolist()
    icl, zero, tv = preds[:n], preds[n:2 * n], preds[2 * n:]
    table = pd.DataFrame({"query": queries,
                          "zero-shot": [model.decode_token(i) for i in zero],
                          "ICL": [model.decode_token(i) for i in icl],
                          f"task vector (layer {layer})": [model.decode_token(i) for i in tv]})
    return table, {"demos": demos, "dummies": dummies}
