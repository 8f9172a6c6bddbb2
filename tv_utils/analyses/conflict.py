"""Conflicting tasks (paper Table 2): demonstrations of task A with the task vector of task B patched in;
which task's answers does the model give?"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dataclasses import replace

from .. import engine, store
from ..experiments import prepare_split
from ..protocol import (KIT, PAPER, Protocol, best_of, compare, episode_hits, episode_table, score, tie_layers,
                        with_intervals, with_query_intervals)
from ..models import Model
from ..prompts import DEFAULT_FORMAT, PromptFormat, answer_token_ids, answers_token_ids, paper_hits, usable_task
from ..tasks import TASK_NAMES, Episode, get_task, make_task, sample_episodes

__all__ = ["B_ALONE", "b_dev_sweep", "chosen_layers", "CONFLICT", "conflict_by_layer", "conflict_hits",
           "conflict_pair", "conflict_partners", "conflict_table", "conflicting_tasks", "followed_task", "KIT_N",
           "OVERRIDE", "PAPER_CONFLICTS", "PAPER_OVERRIDING", "paper_protocol", "REGULAR", "run", "run_widget",
           "shared_queries",
           "stored_pairs", "widget_file",
           "WIDGET_N", "widget_pairs", "widget_table"]

PAPER_CONFLICTS = (
    ("next_letter", "to_upper"),
    ("list_last", "list_first"),
    ("prev_letter", "next_letter"),
    ("present_simple_past_simple", "present_simple_gerund"),
    ("en_es", "en_fr"),
)


# The official overriding.py: 4 demonstrations, and 100 test pairs (each with theta of one of B's 100 episodes)
PAPER_OVERRIDING = {"k": 4, "n": 100}
KIT_N = 50  # the kit's own conflict settings: protocol.KIT (5 demonstrations) and 50 pairs


def paper_protocol(seed: int = 0) -> tuple[Protocol, int]:
    """The official overriding experiment's protocol and episode count: the paper's conventions, k = 4, n = 100."""
    return replace(PAPER, k=PAPER_OVERRIDING["k"], seed=seed), PAPER_OVERRIDING["n"]


def shared_queries(a: str, b: str, protocol: Protocol, n: int, split: str = "test", tokenizer=None) -> list[Episode]:
    """Episodes of task A whose query input also has an answer under task B (so both can be scored). With the
    paper's prompts (which need the `tokenizer`), both tasks are first made usable as the official code makes them
    (`prompts.usable_task`: single-token answers for the mapping tasks, their spacing)."""
    task_a, task_b = get_task(a), get_task(b)
    if protocol.prompts == "paper":
        if tokenizer is None:
            raise ValueError("shared_queries with the paper's prompts needs the model's tokenizer (which answers "
                             "stay single tokens); pass tokenizer=model.tokenizer, or a protocol with prompts='kit'")
        task_a, task_b = (usable_task(t, tokenizer, DEFAULT_FORMAT, "paper")[0] for t in (task_a, task_b))
    b_answers = {x.strip() for x, _ in task_b.pairs}
    shared = [(x, y) for x, y in task_a.pairs if x.strip() in b_answers]
    if len(shared) < protocol.k + protocol.n_dummies + 1:
        raise ValueError(f"tasks {a!r} and {b!r} share only {len(shared)} inputs; pick tasks over the same inputs, "
                         f"e.g. {', '.join(f'{p}/{q}' for p, q in PAPER_CONFLICTS)}")
    pool = replace(task_a, pairs=tuple(shared)) if protocol.prompts == "paper" else make_task(a, shared,
                                                                                            task_a.category)
    return sample_episodes(pool, n, protocol.k, protocol.n_dummies, split, protocol.seed, protocol.sampling)


def conflict_partners(task_a: str, min_shared: int = 8) -> list[str]:
    """Tasks that share at least `min_shared` inputs with task_a (so demos of A can be scored on B's answers)."""
    inputs = {x for x, _ in get_task(task_a).pairs}
    return [b for b in TASK_NAMES if b != task_a and len(inputs & {x for x, _ in get_task(b).pairs}) >= min_shared]


def followed_task(table: pd.DataFrame, task_a: str, task_b: str) -> str:
    """The task whose answers the model gives with θ(B) patched over demonstrations of A (the higher accuracy
    in the "ICL + theta of B" row; A on a tie)."""
    row = table[(table.task_a == task_a) & (table.task_b == task_b) & (table.method == CONFLICT)].iloc[0]
    return task_b if row.acc_b > row.acc_a else task_a


REGULAR, CONFLICT = "ICL (demos of A)", "ICL + theta of B"
B_ALONE = "theta of B alone"  # B's own dev sweep, which sets the paper's layer
OVERRIDE = "ICL + theta of B, best override layer"  # the layer where theta(B) wins most, chosen on dev


def conflict_hits(model: Model, pairs=PAPER_CONFLICTS, n: int = PAPER_OVERRIDING["n"], protocol: Protocol | None = None,
                  fmt: PromptFormat = DEFAULT_FORMAT, splits=("dev", "test"), progress: bool = False) -> pd.DataFrame:
    """Every episode behind the conflict tables, tidy (task_a, task_b, split, method, layer, episode, scored_on,
    hit): B's own dev sweep (theta of B alone, scored on B); and episodes of demonstrations of A (`splits`: the
    dev ones choose the best override layer), without theta and with theta(B) written at every layer, scored on
    A's and on B's answers. The protocol's conventions apply: with the paper's, prompts and answers are the
    official code's and both answers are scored by A's rule (overriding.py), and a column `same_first_token`
    marks the episodes whose A and B answers start with the same token (both can then "hit" at once). Default:
    the official overriding experiment's protocol (`paper_protocol`)."""
    from tqdm.auto import tqdm

    protocol = protocol or paper_protocol()[0]
    paper = protocol.prompts == "paper"
    blocks = []
    for a, b in tqdm(pairs, desc=f"conflicting pairs ({model.name})", unit="pair", disable=not progress):
        for name in (a, b):
            if name not in TASK_NAMES:
                raise KeyError(f"unknown task {name!r} in pair ({a}, {b}); valid tasks: {', '.join(TASK_NAMES)}")
        keys = dict(task_a=a, task_b=b)
        b_split = prepare_split(model, b, "dev", n, protocol, fmt, icl=False)
        layers = list(range(model.n_layers))
        alone = score(model, b_split.task, b_split.episodes, engine.layer_sweep(model, b_split.queries, b_split.theta),
                      b_split.target, protocol.scoring, fmt)
        blocks.append(episode_table("", "dev", B_ALONE, alone.cpu().numpy(), layers, **keys, scored_on="B"))
        answers_b = {x.strip(): y for x, y in (b_split.task if paper else get_task(b)).pairs}
        for split in splits:
            episodes = shared_queries(a, b, protocol, n, split, model.tokenizer)
            answers = {"A": [ep.query[1] for ep in episodes], "B": [answers_b[ep.query[0].strip()] for ep in episodes]}
            spaced = episodes[0].spaced if paper else True
            targets = {side: torch.tensor([ids[0] for ids in answers_token_ids(model.tokenizer, ys, fmt, spaced)])
                       for side, ys in answers.items()}
            same = {"query": [ep.query[0].strip() for ep in episodes],
                    "same_first_token": (targets["A"] == targets["B"]).numpy()} if paper else None
            icl = model.encode([fmt.episode_icl(ep) for ep in episodes])
            regular = engine.next_tokens(model, icl).cpu()
            patched = engine.layer_sweep(model, icl, b_split.theta).cpu()  # theta(B) of B's i-th dev episode
            for side, target in targets.items():
                hit = _scorer(model, a, episodes, answers[side], protocol.scoring)
                blocks.append(episode_table("", split, REGULAR, hit(regular, target).numpy(), None, same,
                                            **keys, scored_on=side))
                blocks.append(episode_table("", split, CONFLICT, hit(patched, target[:, None]).numpy(), layers,
                                            same, **keys, scored_on=side))
    return pd.concat(blocks, ignore_index=True).drop(columns="task")


def _scorer(model: Model, a: str, episodes, answers, scoring: str):
    """hits(predicted, target) for one side of a conflict: the kit's first-token match, or the official string
    rule of task A (overriding.py scores both answers with A's `compare_outputs`)."""
    if scoring == "paper":
        return lambda predicted, _: paper_hits(model.tokenizer, get_task(a), episodes, predicted,
                                               [(y,) for y in answers])
    return lambda predicted, target: episode_hits(model, predicted, target)


def chosen_layers(hits: pd.DataFrame, layer: int | None = None) -> pd.DataFrame:
    """Per pair, the layers the conflict tables use: the paper's (B's best dev layer, first maximum, with its
    tie set; or `layer` when given) and the best override layer (top dev accuracy on B with theta(B) written
    over demonstrations of A)."""
    rows = []
    for (a, b), pair in hits.groupby(["task_a", "task_b"], sort=False):
        alone = pair[pair.method == B_ALONE].groupby("layer").hit.agg(["mean", "size"])
        override = pair[(pair.method == CONFLICT) & (pair.split == "dev") & (pair.scored_on == "B")]
        override = override.groupby("layer").hit.mean()
        n_dev = int(alone["size"].iloc[0])
        rows.append({"task_a": a, "task_b": b,
                     "paper_layer": best_of(list(alone.index), alone["mean"].tolist()) if layer is None else layer,
                     "b_dev_ties": " ".join(map(str, tie_layers(list(alone.index), alone["mean"].tolist(), n_dev))),
                     "override_layer": best_of(list(override.index), override.tolist()) if len(override) else None})
    return pd.DataFrame(rows)


def conflict_table(hits: pd.DataFrame, layer: int | None = None, exact: bool = False) -> pd.DataFrame:
    """Paper Table 2 from `conflict_hits`, on the test episodes: per pair, plain ICL, theta(B) at the paper's
    layer, and theta(B) at the best override layer, each with accuracy on A's and B's answers (95% Wilson
    intervals) and, for the two with theta, the change against plain ICL on the same episodes (McNemar's score
    test, or with `exact` the exact test with Holm over the pairs, `protocol.compare`). Without dev episodes of
    the conflict there is no override row."""
    choice = chosen_layers(hits, layer).set_index(["task_a", "task_b"])
    test = hits[hits.split == "test"]
    picked = []
    for (a, b), pair in test.groupby(["task_a", "task_b"], sort=False):
        paper, override = choice.loc[(a, b), "paper_layer"], choice.loc[(a, b), "override_layer"]
        picked += [pair[pair.method == REGULAR].assign(layer=paper),
                   pair[(pair.method == CONFLICT) & (pair.layer == paper)]]
        if pd.notna(override):
            picked.append(pair[(pair.method == CONFLICT) & (pair.layer == override)].assign(method=OVERRIDE))
    picked = pd.concat(picked, ignore_index=True)
    keys = ["task_a", "task_b", "method", "layer"]
    by_query = "query" in picked  # the paper protocol's runs keep each episode's query: intervals by query
    wide = picked.pivot_table(index=[*keys, "episode", *(["query"] if by_query else [])], columns="scored_on",
                              values="hit", sort=False).reset_index()
    table = wide.groupby(keys, sort=False).agg(n=("episode", "size"), acc_a=("A", "mean"), acc_b=("B", "mean"))
    if by_query:
        groups = dict(list(wide.groupby(keys, sort=False)))
        by_row = {(k, f"acc_{side.lower()}"): g[side].to_numpy() for k, g in groups.items() for side in "AB"}
        queries = {k: g["query"].tolist() for k, g in groups.items()}
        table = with_query_intervals(table.reset_index().assign(row=list(groups)), ["acc_a", "acc_b"], by_row,
                                     queries, key="row", label="conflict/").drop(columns="row")
    else:
        table = with_intervals(table.reset_index(), ["acc_a", "acc_b"], "n")
    if "same_first_token" in picked:  # the paper protocol's runs: episodes where A's and B's answers share a token
        same = picked[picked.scored_on == "A"].groupby(keys, sort=False).same_first_token.sum()
        table["same_first_token"] = same.loc[list(zip(*(table[k] for k in keys)))].astype(int).to_numpy()
    table["b_dev_ties"] = [choice.loc[(a, b), "b_dev_ties"] if m == CONFLICT else None
                           for a, b, m in zip(table.task_a, table.task_b, table.method)]
    pair_of = picked.task_a + ":" + picked.task_b
    for method in [m for m in (CONFLICT, OVERRIDE) if m in set(table.method)]:
        changes = compare(picked.assign(task=pair_of), method, REGULAR, by=("task", "scored_on"), exact=exact)
        at = table.method == method
        for scored_on in ("A", "B"):
            change = changes[changes.scored_on == scored_on].set_index("task")
            col = f"change_{scored_on.lower()}"
            for suffix, source in (("", "diff"), ("_lo", "diff_lo"), ("_hi", "diff_hi"), ("_p", "p_value"),
                                   ("_verdict", "verdict")):
                table.loc[at, col + suffix] = (table.task_a + ":" + table.task_b)[at].map(change[source])
    table.insert(0, "model", hits.attrs.get("model", ""))
    return table


def conflict_by_layer(hits: pd.DataFrame, layer: int | None = None) -> pd.DataFrame:
    """Accuracy on A and on B with theta(B) written at each layer over demonstrations of A (test episodes, 95%
    intervals: by query, with `n_queries`, where the episodes keep their query, as the paper protocol's runs do;
    else Wilson), the dev accuracy on B that picks the override layer, and each pair's chosen layers."""
    patched = hits[hits.method == CONFLICT]
    keys = ["task_a", "task_b", "layer"]
    test = patched[patched.split == "test"]
    by_query = "query" in test
    wide = test.pivot_table(index=[*keys, "episode", *(["query"] if by_query else [])], columns="scored_on",
                            values="hit", sort=False).reset_index()
    table = wide.groupby(keys, sort=False).agg(n=("episode", "size"), acc_a=("A", "mean"), acc_b=("B", "mean"))
    table = table.reset_index()
    dev = patched[(patched.split == "dev") & (patched.scored_on == "B")].groupby(keys, sort=False).hit.mean()
    table["dev_acc_b"] = dev.loc[list(zip(table.task_a, table.task_b, table.layer))].to_numpy()
    if by_query:
        groups = dict(list(wide.groupby(keys, sort=False)))
        by_row = {(k, f"acc_{side.lower()}"): g[side].to_numpy() for k, g in groups.items() for side in "AB"}
        table = with_query_intervals(table.assign(row=list(groups)), ["acc_a", "acc_b"], by_row,
                                     {k: g["query"].tolist() for k, g in groups.items()}, key="row",
                                     label="conflict_by_layer/").drop(columns="row")
    else:
        table = with_intervals(table, ["acc_a", "acc_b"], "n")
    table.insert(0, "model", hits.attrs.get("model", ""))
    return table.merge(chosen_layers(hits, layer), on=["task_a", "task_b"])


def conflicting_tasks(model: Model, pairs=PAPER_CONFLICTS, n: int = PAPER_OVERRIDING["n"], layer: int | None = None,
                      protocol: Protocol | None = None, fmt: PromptFormat = DEFAULT_FORMAT,
                      override: bool = True) -> pd.DataFrame:
    """Demonstrations of A with theta(B) patched in: accuracy on A's and B's answers (paper Table 2), with
    intervals and the paired change against plain ICL (`conflict_table`); override=False skips the dev
    episodes that choose the best override layer (about half the work, for live widgets). Default protocol: the
    official overriding experiment's (`paper_protocol`)."""
    protocol = protocol or paper_protocol()[0]
    if layer is not None:
        model.check_layer(layer)
    splits = ("dev", "test") if override else ("test",)
    return conflict_table(_named(conflict_hits(model, pairs, n, protocol, fmt, splits), model), layer,
                          exact=protocol.variant == "paper")


def _named(hits: pd.DataFrame, model: Model) -> pd.DataFrame:
    hits.attrs["model"] = model.name
    return hits


def run(model: Model, pairs=PAPER_CONFLICTS, n: int = PAPER_OVERRIDING["n"], layer: int | None = None,
        out_dir: str | Path | None = None, figures: bool = True, protocol: Protocol | None = None) -> pd.DataFrame:
    """Writes conflict_<model>.csv (Table 2), conflict_<model>_by_layer.csv (every layer), ..._episodes.csv
    (every hit) and, with `figures`, their charts; returns the table. Default: the official overriding
    experiment's protocol and n (`paper_protocol`); `protocol.KIT` with n = 50 is the kit's."""
    from .. import plots

    protocol = protocol or paper_protocol()[0]
    if layer is not None:
        model.check_layer(layer)
    hits = _named(conflict_hits(model, pairs, n=n, protocol=protocol, progress=True), model)
    table, by_layer = conflict_table(hits, layer, exact=protocol.variant == "paper"), conflict_by_layer(hits, layer)
    stem = store.results_stem("conflict", model.name, out_dir)
    store.save_table(table, f"{stem}.csv")
    store.save_table(by_layer, f"{stem}_by_layer.csv")
    store.save_table(hits, f"{stem}_episodes.csv")
    if figures:
        store.save_figure(plots.conflict_bars(table), stem)
        store.save_figure(plots.conflict_layer_curves(by_layer), f"{stem}_by_layer")
    return table


def b_dev_sweep(model: Model, b: str, n: int = KIT_N, protocol: Protocol = KIT,
                fmt: PromptFormat = DEFAULT_FORMAT) -> tuple[torch.Tensor, np.ndarray]:
    """Task B's own dev sweep, which sets the paper's layer in a conflict: theta(B) of each dev episode [n,
    n_layers, H] and its hits alone at every layer [n, n_layers] (as `conflict_hits` computes them)."""
    b_split = prepare_split(model, b, "dev", n, protocol, fmt, icl=False)
    alone = episode_hits(model, engine.layer_sweep(model, b_split.queries, b_split.theta), b_split.target[:, None])
    return b_split.theta, alone.cpu().numpy()


@torch.no_grad()
def conflict_pair(model: Model, a: str, b: str, n: int = KIT_N, layer: int | None = None,
                  protocol: Protocol = KIT, fmt: PromptFormat = DEFAULT_FORMAT, b_sweep=None) -> pd.DataFrame:
    """The table of `conflicting_tasks(model, [(a, b)], n, layer, KIT, override=False)` for one pair (the kit's
    conventions, the widget's, whose stored table was run on them), in about half
    the time (for a live widget): theta(B) is written only at the layer the table reports (B's best dev layer,
    or `layer`), not at every layer, and the plain-ICL answer reuses the cached prompt prefix of the patched
    run. `b_sweep`: `b_dev_sweep(model, b, n, protocol, fmt)`, when it was already computed."""
    for name in (a, b):
        if name not in TASK_NAMES:
            raise KeyError(f"unknown task {name!r} in pair ({a}, {b}); valid tasks: {', '.join(TASK_NAMES)}")
    if layer is not None:
        model.check_layer(layer)
    theta, alone = b_dev_sweep(model, b, n, protocol, fmt) if b_sweep is None else b_sweep
    keys = dict(task_a=a, task_b=b)
    blocks = [episode_table("", "dev", B_ALONE, alone, list(range(model.n_layers)), **keys, scored_on="B")]
    paper = int(chosen_layers(pd.concat(blocks, ignore_index=True).drop(columns="task"), layer).paper_layer[0])
    episodes = shared_queries(a, b, protocol, n, "test")
    tok, answers_b = model.tokenizer, dict(get_task(b).pairs)
    targets = {"A": torch.tensor([answer_token_ids(tok, ep.query[1], fmt)[0] for ep in episodes]),
               "B": torch.tensor([answer_token_ids(tok, answers_b[ep.query[0]], fmt)[0] for ep in episodes])}
    seqs = model.encode([fmt.episode_icl(ep) for ep in episodes])
    # the prompts minus their last token once; then the last token patched at `paper`, then unpatched
    prefix_mask, cache = engine.cached_prefix(model, [s[:-1] for s in seqs])
    cache.activate_past_recording()  # so that crop can also roll back a sliding-window layer that is full
    batch = engine.suffix_batch(model, prefix_mask, [[s[-1]] for s in seqs], 1)
    states = theta[:, paper].to(model.device, model.dtype)
    patched_state = engine.run_after(model, batch, cache, paper, states)  # crops the cache back to the prefix
    regular_state, _, _ = engine.forward(model, batch, cache=cache)
    preds = engine.predict(model, torch.cat([regular_state, patched_state])).cpu()
    regular, patched = preds[:len(seqs)], preds[len(seqs):]
    for scored_on, target in targets.items():
        blocks.append(episode_table("", "test", REGULAR, episode_hits(model, regular, target).numpy(), None,
                                    **keys, scored_on=scored_on))
        blocks.append(episode_table("", "test", CONFLICT, episode_hits(model, patched, target).numpy(), paper,
                                    **keys, scored_on=scored_on))
    hits = _named(pd.concat(blocks, ignore_index=True).drop(columns="task"), model)
    return conflict_table(hits, layer)


WIDGET_N = 10  # the conflict widget's episodes in the notebooks


def widget_pairs(tasks=TASK_NAMES) -> list[tuple[str, str]]:
    """Every ordered pair the conflict widget offers: each task A with a partner, and each partner B of it
    (`conflict_partners`)."""
    return [(a, b) for a in tasks for b in conflict_partners(a)]


def widget_table(model: Model, pairs=None, n: int = WIDGET_N, progress: bool = False) -> pd.DataFrame:
    """The conflict widget's table for every pair it offers (`widget_pairs`), computed once: `conflict_pair`
    on n episodes at B's best dev layer, each B's dev sweep run once and shared by its pairs, as the widget
    runs them. Pairs whose tasks share too few inputs for n episodes are left out (the widget says so without
    running the model). `stored_pairs` reads it back."""
    from tqdm.auto import tqdm

    sweeps, tables = {}, []
    for a, b in tqdm(widget_pairs() if pairs is None else list(pairs), desc=f"conflict widget ({model.name})",
                     unit="pair", disable=not progress):
        try:
            shared_queries(a, b, KIT, n)
        except ValueError:
            continue
        if b not in sweeps:
            sweeps[b] = b_dev_sweep(model, b, n)
        tables.append(conflict_pair(model, a, b, n=n, b_sweep=sweeps[b]))
    return pd.concat(tables, ignore_index=True)


def widget_file(model_name: str, folder: str | Path | None = None) -> Path:
    """Where `run_widget` writes the widget's table: <folder>/conflict_<model>_widget.csv."""
    return store.suffixed(store.results_stem("conflict", model_name, folder), "_widget.csv")


def stored_pairs(model_name: str, n: int = WIDGET_N) -> dict:
    """The stored widget table of a model at n episodes (your results if you point at them, else the committed
    reference), {(task_a, task_b): that pair's table}; empty when there is none for this model."""
    table = store.precomputed(widget_file(model_name).name[:-len(".csv")])
    if table is None:
        return {}
    table = table[table.n == n]
    return {(a, b): pair.reset_index(drop=True) for (a, b), pair in table.groupby(["task_a", "task_b"], sort=False)}


def run_widget(model: Model, pairs=None, n: int = WIDGET_N, out_dir: str | Path | None = None) -> pd.DataFrame:
    """Writes conflict_<model>_widget.csv (`widget_table`) and returns it."""
    table = widget_table(model, pairs, n, progress=True)
    store.save_table(table, widget_file(model.name, out_dir))
    return table
