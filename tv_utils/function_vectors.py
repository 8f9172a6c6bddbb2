"""Function vectors (Todd et al., ICLR 2024) beside task vectors, on the same tasks, episodes and scoring.

A head's output at the last token is its slice of the attention's pre-projection state times its block of
the output projection; summed over heads, plus the projection's bias, it is the attention block's output.
Todd et al. write a head's mean output (over ICL prompts of a task) into prompts whose demonstration labels
are shuffled, and call the rise in the right answer's probability the head's causal indirect effect. The
function vector is the sum of the mean outputs of the heads with the largest effect, *added* to the residual
stream at one layer; a task vector *replaces* the residual state there.
"""

from __future__ import annotations

import random
from dataclasses import replace
from operator import attrgetter

import pandas as pd
import torch

from . import engine
from .batches import chunks, pad_left
from .experiments import PAPER, Protocol, accuracy, best_of, encode_queries, run_tasks, sample_split
from .models import Model
from .prompts import DEFAULT_FORMAT, PromptFormat
from .tasks import TASK_NAMES, Episode, get_task

# The attention block's output projection, relative to a decoder layer: Llama/Qwen2/Gemma, GPT-2, GPT-J, NeoX.
HEAD_PROJECTIONS = ("self_attn.o_proj", "attn.c_proj", "attn.out_proj", "attention.dense")


def out_projection(model: Model, layer: int) -> torch.nn.Module:
    """The module that maps the concatenated heads back into the residual stream, in decoder layer `layer`."""
    block = model.layers[model.check_layer(layer)]
    for path in HEAD_PROJECTIONS:
        try:
            return attrgetter(path)(block)
        except AttributeError:
            continue
    raise NotImplementedError(f"{type(block).__name__}: no attention output projection at {HEAD_PROJECTIONS}")


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


def _projection_hooks(model: Model, hook) -> list:
    return [out_projection(model, layer).register_forward_pre_hook(hook(layer)) for layer in range(model.n_layers)]


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

        handles = _projection_hooks(model, hook)
        try:
            model.base(**pad_left(model, seqs[part]))
        finally:
            for h in handles:
                h.remove()
        out.append(torch.stack(captured, dim=1))
    states = torch.cat(out)
    return states.view(*states.shape[:2], n_heads(model), -1)


def shuffled_labels(episode: Episode, seed: int = 0) -> Episode:
    """The episode with its demonstrations' answers permuted (inputs keep their order)."""
    answers = [y for _, y in episode.demos]
    random.Random(f"{seed}/{episode.query[0]}").shuffle(answers)
    demos = tuple((x, y) for (x, _), y in zip(episode.demos, answers))
    return replace(episode, demos=demos)


@torch.no_grad()
def indirect_effects(model: Model, task, n: int = 10, protocol: Protocol = PAPER,
                     fmt: PromptFormat = DEFAULT_FORMAT, rows_per_pass: int = 512) -> tuple[pd.DataFrame, torch.Tensor]:
    """Each head's causal indirect effect on one task, and the task's mean head states [n_layers, n_heads, head_dim].

    Mean states come from n clean ICL prompts. On n ICL prompts with shuffled labels, each (layer, head) in
    turn gets its mean state written at the last token; the effect is the mean rise of p(right answer).
    Only the last token is re-run per head (the prompt before it is cached once).
    """
    usable, episodes, target = sample_split(model, task, "dev", n, protocol, fmt)
    clean = model.encode([fmt.episode_icl(ep) for ep in episodes])
    mean = head_states(model, clean).mean(0)  # [L, H, d]
    shuffled = model.encode([fmt.episode_icl(shuffled_labels(ep, protocol.seed)) for ep in episodes])
    n_layers, heads, dim = mean.shape
    cells = [(layer, head) for layer in range(n_layers) for head in range(heads)]
    per_row = len(cells) + 1  # row 0 of each prompt runs unpatched
    prefix_mask, cache = engine.cached_prefix(model, [s[:-1] for s in shuffled])
    cache.batch_repeat_interleave(per_row)
    batch = engine.suffix_batch(model, prefix_mask, [[s[-1]] for s in shuffled for _ in range(per_row)], per_row)
    base_rows = torch.arange(len(shuffled)) * per_row

    def hook(layer):
        def write(_module, args):
            x = args[0]
            for head in range(heads):
                rows = (base_rows + 1 + layer * heads + head).to(x.device)
                x[rows, -1, head * dim:(head + 1) * dim] = mean[layer, head].to(x.device, x.dtype)
        return write

    handles = _projection_hooks(model, hook)
    try:
        out = model.base(**batch, **{model.cache_arg: cache}, use_cache=True)
    finally:
        for h in handles:
            h.remove()
    final = out.last_hidden_state[:, -1]
    answers = target.repeat_interleave(per_row).to(final.device)
    probs = torch.cat([model.unembed(final[part]).float().softmax(-1).gather(1, answers[part, None])[:, 0]
                       for part in chunks(len(final), rows_per_pass)]).view(len(shuffled), per_row)
    effect = (probs[:, 1:] - probs[:, :1]).mean(0).cpu()
    table = pd.DataFrame({"task": usable.name, "category": usable.category, "layer": [l for l, _ in cells],
                          "head": [h for _, h in cells], "effect": effect.tolist()})
    return table, mean


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
    layers = list(range(model.n_layers)) if layers is None else layers
    states = []
    for part in chunks(len(seqs), 64):
        _, captured, _ = engine.forward(model, pad_left(model, seqs[part]), capture=True)
        states.append(captured)
    theta = torch.cat(states) + vector.to(model.device, model.dtype)  # replace with (own state + vector) == add
    return engine.layer_sweep(model, seqs, theta, layers)


def evaluate_vector(model: Model, task, vector: torch.Tensor, protocol: Protocol = PAPER,
                    fmt: PromptFormat = DEFAULT_FORMAT) -> dict:
    """Zero-shot accuracy with `vector` added: the layer chosen on dev, the accuracy reported on test."""
    _, dev, dev_target = sample_split(model, task, "dev", protocol.n_dev, protocol, fmt)
    layers = list(range(model.n_layers))
    dev_acc = accuracy(model, added_sweep(model, encode_queries(model, dev, fmt), vector), dev_target[:, None], dim=0)
    best = best_of(layers, dev_acc)
    _, test, test_target = sample_split(model, task, "test", protocol.n_test, protocol, fmt)
    answers = added_sweep(model, encode_queries(model, test, fmt), vector, [best])[:, 0]
    return {"accuracy": accuracy(model, answers, test_target), "layer": best, "dev_acc": dev_acc}


def mapping_rank(task) -> float:
    """Distinct outputs per input: 1.0 for a one-to-one mapping (letter shifts, translation), low for a few
    shared answers (continents, religions)."""
    task = get_task(task) if isinstance(task, str) else task
    return len({y for _, y in task.pairs}) / len(task.pairs)


def compare_methods(model: Model, tasks=TASK_NAMES, k: int = 10, n_effect: int = 10, protocol: Protocol = PAPER,
                    fmt: PromptFormat = DEFAULT_FORMAT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Baseline, ICL, task vector (replaced), task vector added (minus the mean over tasks), function vector
    (added), and both vectors on ICL prompts with shuffled labels, on the same episodes and scoring:
    (one row per task, the indirect-effect table of every head and task)."""
    from tqdm.auto import tqdm

    results, _ = run_tasks(model, tasks, protocol, fmt, progress=False)
    effects, head_means, task_theta = [], {}, {}
    for task in tqdm(tasks, desc="indirect effects and mean θ"):
        table, head_means[task] = indirect_effects(model, task, n_effect, protocol, fmt)
        effects.append(table)
        _, dev, _ = sample_split(model, task, "dev", protocol.n_dev, protocol, fmt)
        task_theta[task] = engine.episode_states(model, dev, fmt, icl=False)[0].float().mean(0)  # [L, H]
    effects = pd.concat(effects, ignore_index=True)
    heads = top_heads(effects, k)
    centre = torch.stack(list(task_theta.values())).mean(0)
    rows = []
    for task, (_, row) in tqdm(list(zip(tasks, results.iterrows())), desc="function vectors"):
        vector = function_vector(model, head_means[task], heads)
        fv_run = evaluate_vector(model, task, vector, protocol, fmt)
        tv_add = evaluate_vector(model, task, task_theta[task] - centre, protocol, fmt)
        _, test, target = sample_split(model, task, "test", protocol.n_test, protocol, fmt)
        shuffled = model.encode([fmt.episode_icl(shuffled_labels(ep, protocol.seed)) for ep in test])
        theta, _ = engine.episode_states(model, test, fmt, icl=False)
        tv_layer = int(row["best_layer"])
        rows.append({
            "task": row["task"], "category": row["category"], "mapping_rank": round(mapping_rank(task), 4),
            "baseline": row["baseline"], "icl": row["icl"], "tv": row["tv"], "tv_add": tv_add["accuracy"],
            "fv": fv_run["accuracy"],
            "icl_shuffled": accuracy(model, engine.next_tokens(model, shuffled), target),
            "icl_shuffled_tv": accuracy(model, engine.layer_sweep(model, shuffled, theta, [tv_layer])[:, 0], target),
            "icl_shuffled_fv": accuracy(model, added_sweep(model, shuffled, vector, [fv_run["layer"]])[:, 0], target),
            "tv_layer": tv_layer, "tv_add_layer": tv_add["layer"], "fv_layer": fv_run["layer"]})
    table = pd.DataFrame(rows)
    table.attrs["heads"] = heads
    return table, effects
