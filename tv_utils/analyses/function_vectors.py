"""Function vectors (Todd et al., ICLR 2024) beside task vectors, on the same tasks, episodes and scoring.

A head's output at the last token is its slice of the attention's pre-projection state times its block of
the output projection; summed over heads, plus the projection's bias, it is the attention block's output.
Todd et al. write a head's mean output (over ICL prompts of a task) into prompts whose demonstration labels
are shuffled, and call the rise in the right answer's probability the head's causal indirect effect. The
function vector is the sum of the mean outputs of the heads with the largest effect, *added* to the residual
stream at one layer; a task vector *replaces* the residual state there. Episodes under the kit's conventions
(`protocol.KIT`) until this analysis is re-run on the paper's (docs/protocol.md).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, replace
from operator import attrgetter
from pathlib import Path

import pandas as pd
import torch

from .. import engine, store
from ..batches import chunks, layer_hidden, pad_left
from ..hooks import hooked
from ..experiments import encode_queries, prepare_split, run_with_theta, sample_split
from ..protocol import KIT, Protocol, accuracy, best_of, compare, episode_hits, episode_table, with_intervals
from ..models import Model
from ..prompts import DEFAULT_FORMAT, PromptFormat
from ..tasks import TASK_NAMES, Episode, get_task

__all__ = ["added_sweep", "added_sweeps", "compare_methods", "Comparison", "comparison_table",
           "evaluate_vectors", "function_vector", "head_blocks", "head_outputs", "head_patched_probs",
           "HEAD_PROJECTIONS", "head_states", "indirect_effects", "K_CHOICES", "mapping_rank", "mean_head_states",
           "method_long", "METHODS", "n_heads", "out_projection", "PAIRS", "post_attention_norm", "projection_path",
           "replaced_then_added", "residual_contributions", "RESISTANT_TASKS", "run", "several_vectors", "SHUFFLED",
           "shuffled_labels", "top_heads"]

# The attention block's output projection, relative to a decoder layer: Llama/Qwen2/Gemma, GPT-2, GPT-J, NeoX.
HEAD_PROJECTIONS = ("self_attn.o_proj", "attn.c_proj", "attn.out_proj", "attention.dense")


def projection_path(model: Model) -> str:
    """Where the attention's output projection sits inside a decoder layer (e.g. "self_attn.o_proj")."""
    block = model.layers[0]
    for path in HEAD_PROJECTIONS:
        try:
            attrgetter(path)(block)
            return path
        except AttributeError:
            continue
    raise NotImplementedError(f"{type(block).__name__}: no attention output projection at {HEAD_PROJECTIONS}")


def out_projection(model: Model, layer: int) -> torch.nn.Module:
    """The module that maps the concatenated heads back into the residual stream, in decoder layer `layer`."""
    return attrgetter(projection_path(model))(model.layers[model.check_layer(layer)])


def n_heads(model: Model) -> int:
    config = model.hf.config
    return getattr(config, "num_attention_heads", None) or config.n_head


def head_blocks(model: Model, layer: int) -> torch.Tensor:
    """The output projection split by head, as [n_heads, hidden, head_dim] (out, in) blocks."""
    proj = out_projection(model, layer)
    weight = proj.weight if isinstance(proj, torch.nn.Linear) else proj.weight.T  # GPT-2's Conv1D stores (in, out)
    return weight.view(weight.shape[0], n_heads(model), -1).permute(1, 0, 2)


def head_outputs(model: Model, states: torch.Tensor, layer: int) -> torch.Tensor:
    """Each head's share of the output projection, [..., n_heads, hidden], from its states [..., n_heads, head_dim]."""
    return torch.einsum("...hd,hod->...ho", states.to(model.dtype), head_blocks(model, layer))


def residual_contributions(model: Model, states: torch.Tensor, layer: int) -> torch.Tensor:
    """What each head adds to the residual stream, [..., n_heads, hidden]. Gemma normalizes the attention output
    before adding it (a post-attention RMSNorm): the norm scales every head's share by the same factor, taken
    from the heads' total, so the shares still add up exactly."""
    outputs = head_outputs(model, states, layer)
    block = model.layers[layer]
    if not hasattr(block, "pre_feedforward_layernorm"):  # pre-norm families add the projection as it is
        return outputs
    total = outputs.sum(-2)
    factor = (block.post_attention_layernorm(total) / total).nan_to_num(0.0)
    return outputs * factor.unsqueeze(-2)


def post_attention_norm(model: Model, layer: int) -> torch.nn.Module | None:
    """The norm applied to the attention block's output before it joins the residual stream (Gemma's
    sandwich norm), or None where the output is added as it is. Gemma has a norm on both sides of the MLP
    (`pre_feedforward_layernorm`); in Llama-like families `post_attention_layernorm` is the MLP's input norm,
    despite its name, and does not touch what the attention adds."""
    block = model.layers[model.check_layer(layer)]
    return block.post_attention_layernorm if hasattr(block, "pre_feedforward_layernorm") else None


def _projection_hooks(model: Model, hook):
    """`hook(layer)` as a forward pre-hook on every layer's attention output projection, for one block."""
    return hooked([(out_projection(model, layer), hook(layer)) for layer in range(model.n_layers)], pre=True)


@torch.no_grad()
def head_states(model: Model, seqs: list[list[int]], batch_size: int = 32) -> torch.Tensor:
    """Every head's pre-projection state at the last token: [n_prompts, n_layers, n_heads, head_dim]."""
    out = []
    for part in chunks(len(seqs), batch_size):
        captured = [None] * model.n_layers

        def hook(layer):
            def save(_module, args):
                captured[layer] = args[0][:, -1].to(model.device, copy=True)
            return save

        with _projection_hooks(model, hook):
            model.base(**pad_left(model, seqs[part]))
        out.append(torch.stack(captured, dim=1))
    states = torch.cat(out)
    return states.view(*states.shape[:2], n_heads(model), -1)


def _head_patch_trace(lm, projection, head_slice, state, batch):
    """One nnsight trace: write `state` into one head's slice of the output projection's input at the last
    token (nothing if None); the last position's logits come back."""
    with lm.trace(batch, logits_to_keep=1):
        if state is not None:
            projection.input[:, -1, head_slice] = state
        logits = lm.output.logits[:, -1].save()
    return logits


@torch.no_grad()
def head_patched_probs(model: Model, seqs: list[list[int]], answers: torch.Tensor, layer: int, head: int,
                       state: torch.Tensor | None) -> torch.Tensor:
    """p(answer) per prompt with head `head` of `layer` set to `state` [head_dim] at the last token (None:
    unpatched). The plain nnsight form of one cell of `indirect_effects`, which patches every head at once."""
    dim = head_blocks(model, layer).shape[-1]
    projection = attrgetter(projection_path(model))(model.nn_layers()[model.check_layer(layer)])
    value = None if state is None else state.to(model.device, model.dtype)
    logits = _head_patch_trace(model.nn, projection, slice(head * dim, (head + 1) * dim), value, pad_left(model, seqs))
    return logits.float().softmax(-1).gather(1, answers.to(logits.device)[:, None])[:, 0].cpu()


def shuffled_labels(episode: Episode, seed: int = 0) -> Episode:
    """The episode with its demonstrations' answers permuted (inputs keep their order)."""
    answers = [y for _, y in episode.demos]
    random.Random(f"{seed}/{episode.query[0]}").shuffle(answers)
    demos = tuple((x, y) for (x, _), y in zip(episode.demos, answers))
    return replace(episode, demos=demos)


def mean_head_states(model: Model, task, n: int = 10, protocol: Protocol = KIT,
                     fmt: PromptFormat = DEFAULT_FORMAT) -> torch.Tensor:
    """Every head's state at the last token, averaged over n clean ICL prompts of the task's dev episodes:
    [n_layers, n_heads, head_dim] (what a function vector is built from)."""
    _, episodes, _ = sample_split(model, task, "dev", n, protocol, fmt)
    return head_states(model, model.encode([fmt.episode_icl(ep) for ep in episodes])).mean(0)


@torch.no_grad()
def indirect_effects(model: Model, task, n: int = 10, protocol: Protocol = KIT,
                     fmt: PromptFormat = DEFAULT_FORMAT, rows_per_pass: int = 512,
                     rows_per_forward: int = 256) -> tuple[pd.DataFrame, torch.Tensor]:
    """Each head's causal indirect effect on one task, and the task's mean head states [n_layers, n_heads, head_dim].

    Mean states come from n clean ICL prompts. On n ICL prompts with shuffled labels, each (layer, head) in
    turn gets its mean state written at the last token; the effect is the mean rise of p(right answer).
    Only the last token is re-run per head (the prompt before it is cached once, and copied for each head's
    row a few prompts at a time, so that the copies stay small: about `rows_per_forward` rows a forward).
    """
    usable, episodes, target = sample_split(model, task, "dev", n, protocol, fmt)
    mean = mean_head_states(model, task, n, protocol, fmt)
    shuffled = model.encode([fmt.episode_icl(shuffled_labels(ep, protocol.seed)) for ep in episodes])
    n_layers, heads, dim = mean.shape
    cells = [(layer, head) for layer in range(n_layers) for head in range(heads)]
    per_row = len(cells) + 1  # row 0 of each prompt runs unpatched
    prefix_mask, cache = engine.cached_prefix(model, [s[:-1] for s in shuffled])
    finals = []
    for part in chunks(len(shuffled), max(1, rows_per_forward // per_row)):
        prompts = part.stop - part.start
        copied = copy.deepcopy(cache)
        copied.batch_select_indices(torch.arange(part.start, part.stop, device=model.device))
        copied.batch_repeat_interleave(per_row)
        batch = engine.suffix_batch(model, prefix_mask[part], [[s[-1]] for s in shuffled[part] for _ in range(per_row)],
                                    per_row)
        with _projection_hooks(model, _head_writes(mean, torch.arange(prompts) * per_row)):
            out = model.base(**batch, **{model.cache_arg: copied}, use_cache=True)
        finals.append(out.last_hidden_state[:, -1])
    final = torch.cat(finals)
    answers = target.repeat_interleave(per_row).to(final.device)
    probs = torch.cat([model.unembed(final[part]).float().softmax(-1).gather(1, answers[part, None])[:, 0]
                       for part in chunks(len(final), rows_per_pass)]).view(len(shuffled), per_row)
    effect = (probs[:, 1:] - probs[:, :1]).mean(0).cpu()
    table = pd.DataFrame({"task": usable.name, "category": usable.category, "layer": [l for l, _ in cells],
                          "head": [h for _, h in cells], "effect": effect.tolist()})
    return table, mean


def _head_writes(mean: torch.Tensor, base_rows: torch.Tensor):
    """hook(layer) for `_projection_hooks`: in the rows after each prompt's unpatched row (`base_rows`), one per
    (layer, head) in order, write that head's mean state at the last token."""
    n_layers, heads, dim = mean.shape

    def hook(layer):
        def write(_module, args):
            x = args[0]
            for head in range(heads):
                rows = (base_rows + 1 + layer * heads + head).to(x.device)
                x[rows, -1, head * dim:(head + 1) * dim] = mean[layer, head].to(x.device, x.dtype)
        return write

    return hook


def top_heads(effects: pd.DataFrame, k: int) -> list[tuple[int, int]]:
    """The k (layer, head) pairs with the largest mean indirect effect over tasks."""
    mean = effects.groupby(["layer", "head"])["effect"].mean().sort_values(ascending=False)
    return [(int(l), int(h)) for l, h in mean.index[:k]]


def function_vector(model: Model, mean_states: torch.Tensor, heads: list[tuple[int, int]]) -> torch.Tensor:
    """Sum of the chosen heads' mean outputs in the residual stream: [hidden]."""
    return sum(residual_contributions(model, mean_states[layer], layer)[head] for layer, head in heads)


@torch.no_grad()
def added_sweep(model: Model, seqs: list[list[int]], vector: torch.Tensor, layers=None) -> torch.Tensor:
    """Greedy answers [n, len(layers)] with `vector` ([hidden], or [n_layers, hidden] for one per layer) added
    to each prompt's last-token state after each layer in turn."""
    return added_sweeps(model, seqs, [vector], [layers])[0]


@torch.no_grad()
def added_sweeps(model: Model, seqs: list[list[int]], vectors: list[torch.Tensor], layers: list | None = None):
    """`added_sweep` for each of `vectors` (each with its list of layers in `layers`, None for all) on the same
    prompts: their own states and the tokens before the last run once for all vectors."""
    return engine.layer_sweeps(model, seqs, [engine.Added(v) for v in vectors], layers)


def evaluate_vectors(model: Model, task, vectors: list[torch.Tensor], protocol: Protocol = KIT,
                     fmt: PromptFormat = DEFAULT_FORMAT) -> list[dict]:
    """Zero-shot accuracy with each of `vectors` added: its layer chosen on dev, its accuracy reported on test
    (with each test episode's hit). The vectors share the task's episodes, so they share the prompts' work."""
    _, dev, dev_target = sample_split(model, task, "dev", protocol.n_dev, protocol, fmt)
    layers = list(range(model.n_layers))
    dev_acc = [accuracy(model, answers, dev_target[:, None], dim=0)
               for answers in added_sweeps(model, encode_queries(model, dev, fmt), vectors)]
    best = [best_of(layers, acc) for acc in dev_acc]
    _, test, test_target = sample_split(model, task, "test", protocol.n_test, protocol, fmt)
    answers = added_sweeps(model, encode_queries(model, test, fmt), vectors, [[b] for b in best])
    hits = [episode_hits(model, a[:, 0], test_target) for a in answers]
    return [{"accuracy": h.double().mean().item(), "hits": h.cpu(), "layer": b, "dev_acc": acc}
            for h, b, acc in zip(hits, best, dev_acc)]


def mapping_rank(task) -> float:
    """Distinct outputs per input: 1.0 for a one-to-one mapping (letter shifts, translation), low for a few
    shared answers (continents, religions)."""
    task = get_task(task) if isinstance(task, str) else task
    return len({y for _, y in task.pairs}) / len(task.pairs)


METHODS = ("baseline", "icl", "tv", "tv_add", "fv")  # the comparison table's accuracy columns on plain prompts
SHUFFLED = ("icl_shuffled", "icl_shuffled_tv", "icl_shuffled_fv")  # and on prompts with shuffled labels
PAIRS = (("tv", "icl"), ("fv", "tv"), ("tv_add", "tv"))  # paired tests on the same test episodes
K_CHOICES = (1, 2, 5, 10, 20)  # head counts tried for the function vector; the best mean dev accuracy wins


@dataclass
class Comparison:
    """The side-by-side run: one row per task (`table`, with intervals and the paired tests of PAIRS), every
    head's indirect effect per task (`effects`), dev accuracy per task, method and layer (`per_layer`),
    function-vector accuracy per head count (`by_k`), the chosen head count `k` with its heads, and every test
    episode's hit per task and method (`episodes`)."""

    table: pd.DataFrame
    effects: pd.DataFrame
    per_layer: pd.DataFrame
    by_k: pd.DataFrame
    k: int
    heads: list[tuple[int, int]]
    episodes: pd.DataFrame


def _curve(task, method: str, dev_acc, n_dev: int) -> pd.DataFrame:
    curve = pd.DataFrame({"task": task.name, "category": task.category, "method": method,
                          "layer": range(len(dev_acc)), "n_dev": n_dev, "dev_acc": dev_acc})
    return with_intervals(curve, ["dev_acc"], "n_dev")


def comparison_table(rows: pd.DataFrame, episodes: pd.DataFrame) -> pd.DataFrame:
    """The per-task table with 95% Wilson intervals for every accuracy and, for each pair (a, b) of PAIRS, the
    paired difference a - b on the same test episodes with its Tango interval, McNemar p and verdict."""
    table = with_intervals(rows, [*METHODS, *SHUFFLED], "n_test").set_index("task", drop=False)
    for a, b in PAIRS:
        test = compare(episodes, a, b).set_index("task").loc[table.index]
        table[f"{a}_minus_{b}"] = test["diff"]
        table[f"{a}_minus_{b}_lo"], table[f"{a}_minus_{b}_hi"] = test["diff_lo"], test["diff_hi"]
        table[f"{a}_vs_{b}_p"], table[f"{a}_vs_{b}"] = test["p_value"], test["verdict"]
    return table.reset_index(drop=True)


def compare_methods(model: Model, tasks=TASK_NAMES, k: int | None = None, ks=K_CHOICES, n_effect: int = 10,
                    protocol: Protocol = KIT, fmt: PromptFormat = DEFAULT_FORMAT) -> Comparison:
    """Baseline, ICL, task vector (replaced), task vector added (minus the mean over tasks), function vector
    (added), and both vectors on ICL prompts with shuffled labels, on the same episodes and scoring.

    The function vector is tried with each head count in `ks` (layer chosen on dev, accuracy on test); the
    count with the best mean dev accuracy is used for the table, unless `k` is given."""
    from tqdm.auto import tqdm

    tasks = [get_task(t) if isinstance(t, str) else t for t in tasks]
    ks = sorted(set(ks) | ({k} if k else set()))
    tv_run, thetas = run_with_theta(model, tasks, protocol, fmt)  # its θs serve the vectors below
    results, tv_curves = tv_run.results, tv_run.per_layer
    effects, head_means = [], []
    for task in tqdm(tasks, desc="indirect effects"):
        table, mean = indirect_effects(model, task, n_effect, protocol, fmt)
        effects.append(table)
        head_means.append(mean)
    task_theta = [theta.float().mean(0) for theta in thetas["dev"]]  # each task's mean θ [L, H]
    effects = pd.concat(effects, ignore_index=True)
    centre = torch.stack(task_theta).mean(0)
    evaluated = [evaluate_vectors(model, task, [function_vector(model, mean, top_heads(effects, n)) for n in ks]
                                  + [theta - centre], protocol, fmt)  # + the task vector, added
                 for task, mean, theta in tqdm(list(zip(tasks, head_means, task_theta)),
                                               desc="function vectors per head count, task vectors added")]
    runs = {n: [e[i] for e in evaluated] for i, n in enumerate(ks)}
    by_k = pd.DataFrame([{"task": task.name, "category": task.category, "k": n, "n_test": len(run["hits"]),
                          "accuracy": run["accuracy"], "dev_accuracy": max(run["dev_acc"]), "layer": run["layer"]}
                         for n in ks for task, run in zip(tasks, runs[n])])
    by_k = with_intervals(by_k, ["accuracy"], "n_test")
    k = k or int(best_of(ks, [by_k[by_k.k == n].dev_accuracy.mean() for n in ks]))
    heads = top_heads(effects, k)
    tv_test = tv_run.episodes[tv_run.episodes.split == "test"]
    rows, curves, episodes = [], [], [tv_test[["task", "method", "layer", "episode", "hit"]]]  # as the other methods
    for task, mean, fv_run, tv_add, theta, (_, row) in tqdm(
            list(zip(tasks, head_means, runs[k], [e[-1] for e in evaluated], thetas["test"], results.iterrows())),
            desc="shuffled labels"):
        vector = function_vector(model, mean, heads)
        _, test, target = sample_split(model, task, "test", protocol.n_test, protocol, fmt)
        shuffled = model.encode([fmt.episode_icl(shuffled_labels(ep, protocol.seed)) for ep in test])
        tv_layer = int(row["best_layer"])
        # one prefix for the three; nothing added after the last layer is the prompt as it is: the ICL answer
        patched = [theta, engine.Added(vector), engine.Added(torch.zeros_like(vector))]
        with_tv, with_fv, icl = engine.layer_sweeps(model, shuffled, patched,
                                                    [[tv_layer], [fv_run["layer"]], [model.n_layers - 1]])
        hits = {"tv_add": (tv_add["hits"], tv_add["layer"]), "fv": (fv_run["hits"], fv_run["layer"]),
                "icl_shuffled": (episode_hits(model, icl[:, 0], target), None),
                "icl_shuffled_tv": (episode_hits(model, with_tv[:, 0], target), tv_layer),
                "icl_shuffled_fv": (episode_hits(model, with_fv[:, 0], target), fv_run["layer"])}
        episodes += [episode_table(task.name, "test", m, h.cpu().numpy(), layer).drop(columns="split")
                     for m, (h, layer) in hits.items()]
        rows.append({
            "task": row["task"], "category": row["category"], "mapping_rank": round(mapping_rank(task), 4),
            "n_test": len(test), "baseline": row["baseline"], "icl": row["icl"], "tv": row["tv"],
            **{m: h.double().mean().item() for m, (h, _) in hits.items()},
            "tv_layer": tv_layer, "tv_add_layer": tv_add["layer"], "fv_layer": fv_run["layer"]})
        n_dev = protocol.n_dev
        curves += [_curve(task, "tv", tv_curves[tv_curves.task == task.name].dev_acc.tolist(), n_dev),
                   _curve(task, "tv_add", tv_add["dev_acc"], n_dev), _curve(task, "fv", fv_run["dev_acc"], n_dev)]
    episodes = pd.concat(episodes, ignore_index=True)
    return Comparison(comparison_table(pd.DataFrame(rows)[_ROW_ORDER], episodes), effects,
                      pd.concat(curves, ignore_index=True), by_k, k, heads, episodes)


_ROW_ORDER = ["task", "category", "mapping_rank", "n_test", *METHODS, *SHUFFLED, "tv_layer", "tv_add_layer", "fv_layer"]


RESISTANT_TASKS = ("en_es", "next_letter", "prev_letter")  # one-to-one maps, said to resist a single vector


@torch.no_grad()
def replaced_then_added(model: Model, seqs: list[list[int]], theta: torch.Tensor, layer: int, vector: torch.Tensor,
                        add_layer: int) -> torch.Tensor:
    """Greedy answers with each prompt's θ [n, H] replacing its last-token state after `layer`, and `vector`
    [H] added to that state after a later `add_layer`: a task vector and a function vector together."""
    def add(_module, _args, output):
        hidden = layer_hidden(output)
        hidden[:, -1] += vector.to(hidden.device, hidden.dtype)

    with hooked([(model.layers[add_layer], add)]):
        final, _, _ = engine.forward(model, pad_left(model, seqs), patch={layer: (torch.arange(len(seqs)), theta)})
    return engine.predict(model, final)


@torch.no_grad()
def several_vectors(model: Model, tasks=RESISTANT_TASKS, heads: list[tuple[int, int]] | None = None,
                    n_effect: int = 10, protocol: Protocol = KIT, fmt: PromptFormat = DEFAULT_FORMAT) -> pd.DataFrame:
    """Does more than one vector recover what a single θ loses? Per task, layers chosen on dev and accuracy on
    test: the task vector (one episode's θ at one layer); one θ pooling many episodes (the mean θ of the dev
    episodes); and, given the function vector's `heads`, the task vector with the task's function vector added
    at a later layer. (θ written at several adjacent layers is no new vector: the last write replaces the
    last token's state, and nothing else reads that token's earlier states.)"""
    layers = list(range(model.n_layers))
    rows = []
    for task in tasks:
        dev = prepare_split(model, task, "dev", protocol.n_dev, protocol, fmt, icl=False)
        test = prepare_split(model, task, "test", protocol.n_test, protocol, fmt, icl=False)

        def row(method: str, layer: int, answers, add_layer=None) -> dict:
            return {"task": dev.task.name, "category": dev.task.category, "method": method, "layer": layer,
                    "add_layer": add_layer, "n_test": len(test.target),
                    "accuracy": accuracy(model, answers, test.target)}

        pooled = dev.theta.mean(0)  # [n_layers, H], shared by every query
        for method, dev_theta, test_theta in (("task vector", dev.theta, test.theta),
                                              (f"mean θ of {len(dev.episodes)} dev episodes", pooled, pooled)):
            dev_acc = accuracy(model, engine.layer_sweep(model, dev.queries, dev_theta), dev.target[:, None], dim=0)
            best = best_of(layers, dev_acc)
            rows.append(row(method, best, engine.layer_sweep(model, test.queries, test_theta, [best])[:, 0]))
            if method == "task vector":
                layer = best
        later = layers[layer + 1:]
        if heads and later:
            vector = function_vector(model, mean_head_states(model, task, n_effect, protocol, fmt), heads)
            dev_acc = [accuracy(model, replaced_then_added(model, dev.queries, dev.theta[:, layer], layer, vector, m),
                                dev.target) for m in later]
            m = best_of(later, dev_acc)
            rows.append(row("task vector + function vector", layer,
                            replaced_then_added(model, test.queries, test.theta[:, layer], layer, vector, m), m))
    table = pd.DataFrame(rows).astype({"add_layer": "Int64"})  # empty where nothing is added
    return with_intervals(table, ["accuracy"], "n_test")


def method_long(table: pd.DataFrame, methods=METHODS) -> pd.DataFrame:
    """The comparison table's accuracies as (task, method, accuracy, accuracy_lo, accuracy_hi) rows, for bars."""
    parts = [table[["task"]].assign(method=m, accuracy=table[m], accuracy_lo=table.get(f"{m}_lo"),
                                    accuracy_hi=table.get(f"{m}_hi")) for m in methods]
    return pd.concat(parts, ignore_index=True)


def run(model: Model, tasks=TASK_NAMES, k: int | None = None, n_effect: int = 10, protocol: Protocol = KIT,
        out_dir: str | Path | None = None, figures: bool = True) -> dict:
    """`compare_methods`, and `several_vectors` on those of RESISTANT_TASKS among `tasks`. Writes
    function_vectors_<model>{,_head_effects,_per_layer,_by_k,_several_vectors}.csv, _heads.json and, with
    `figures`, the head heatmap, the accuracy per head count and per method; returns {"comparison": ...,
    "several_vectors": ... (None without resistant tasks)}."""
    from .. import plots

    comparison = compare_methods(model, tasks, k=k, n_effect=n_effect, protocol=protocol)
    resistant = [t for t in RESISTANT_TASKS if t in tasks]
    several = several_vectors(model, resistant, comparison.heads, n_effect, protocol) if resistant else None
    stem = store.results_stem("function_vectors", model.name, out_dir)
    store.save_table(comparison.table, f"{stem}.csv")
    store.save_table(comparison.effects, f"{stem}_head_effects.csv")
    store.save_table(comparison.per_layer, f"{stem}_per_layer.csv")
    store.save_table(comparison.by_k, f"{stem}_by_k.csv")
    store.save_table(comparison.episodes, f"{stem}_episodes.csv")
    if several is not None:
        store.save_table(several, f"{stem}_several_vectors.csv")
    store.save_json({"model": model.name, "k": comparison.k, "k_choices": sorted(comparison.by_k.k.unique().tolist()),
                     "top_heads": [list(h) for h in comparison.heads]}, f"{stem}_heads.json")
    if figures:
        store.save_figure(plots.head_heatmap(comparison.effects, comparison.heads), f"{stem}_heads")
        store.save_figure(plots.k_curve(comparison.by_k, comparison.k), f"{stem}_by_k")
        long = method_long(comparison.table)
        store.save_figure(plots.method_bars(long, "task", "accuracy", "method", "Task vectors and function vectors"),
                          f"{stem}_accuracy")
    return {"comparison": comparison, "several_vectors": several}
