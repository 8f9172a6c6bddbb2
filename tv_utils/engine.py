"""Fast engine: the same computations as `interventions`, arranged to skip work that cannot change the answer.

- An episode's ICL prompt and its dummy prompts share the demonstrations: run that prefix once (KV cache)
  and only the short suffixes per prompt; theta for every layer comes out of the same pass. Many tasks'
  episodes can run in order of length, so that batches pad little (`episode_states(by_length=True)`).
- A layer sweep patches only the query's last token, so the tokens before it are run once per query and
  their keys/values reused for every layer. A row patched at layer L needs only the layers after L: its
  state after L is theta. So one forward per layer runs the last token of all queries through the layers
  after L (the layers up to L are stood in for by theta), and the cache is cropped back to the prefix.
  A vector added to the query's own state (`Added`, a function vector) takes that state from the last
  token run once, unpatched, on the same prefix.
- Only last-position logits are needed, and only their argmax: rows go through the unembedding in large
  products, a block of the vocabulary at a time, screened in bf16 where that pays (`head.greedy`).

It drives the transformers modules with plain forward hooks (the nnsight API stays in `interventions`);
tests check that both give the same answers.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import NamedTuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from .batches import PREDICT_ROWS, ROWS, chunks, layer_hidden, pad_left
from .head import greedy
from .hooks import hooked, stand_in
from .models import Model, check_finite
from .prompts import DEFAULT_FORMAT, PromptFormat

__all__ = ["Added", "cached_prefix", "device_rows", "episode_states", "forward", "GPU_SCALE", "HEAD_ROWS",
           "last_token_batch", "layer_sweep", "layer_sweeps", "next_tokens", "predict", "run_after",
           "split_common_prefix", "suffix_batch", "SWEEP_ROWS", "sweep_states"]

HEAD_ROWS = 1024  # rows per pass through the unembedding: each block of its weights is read once for them all
SWEEP_ROWS = int(os.environ.get("TV_UTILS_SWEEP_ROWS", 1024))  # queries per sweep chunk (rows per forward) on CPU
GPU_SCALE = 4  # a GPU wants bigger batches (fewer launches); these sizes fit a 7B model on an 80 GB card


def device_rows(model: Model, cpu_rows: int) -> int:
    """Rows per batch on this model's device: `cpu_rows`, times GPU_SCALE on a GPU."""
    return cpu_rows * GPU_SCALE if model.device.type == "cuda" else cpu_rows


def _steps(n: int, size: int, desc: str | None):
    """Chunks of range(n), with a progress bar when desc is given."""
    parts = list(chunks(n, size))
    return tqdm(parts, desc=desc, leave=False) if desc else parts


def _attention_backends(model: Model):
    """On CUDA, leave out cuDNN attention: it builds an execution plan for every new (batch, length)
    shape, and episodes come in many shapes (measured: ~2x slower end to end on an H100)."""
    if model.device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])


def forward(model: Model, batch: dict, cache=None, capture: bool = False, patch: dict | None = None):
    """One pass of the decoder stack (no head). patch maps layer -> (row index, values) for the last token.

    Returns the final-normed last-token state [B, H], the per-layer last-token states [B, L, H] when
    capture is set, and the KV cache.
    """
    captured: list = [None] * model.n_layers

    def hook(layer_idx):
        def run(_module, _args, output):
            hidden = layer_hidden(output)
            if patch and layer_idx in patch:  # .to(): a sharded model's layers live on several devices
                rows, values = patch[layer_idx]
                hidden[rows.to(hidden.device), -1] = values.to(hidden.device, hidden.dtype)
            if capture:
                captured[layer_idx] = hidden[:, -1].to(model.device, copy=True)

        return run

    hooks = [(layer, hook(i)) for i, layer in enumerate(model.layers)] if patch or capture else []
    with hooked(hooks), _attention_backends(model):
        out = model.base(**batch, **{model.cache_arg: cache}, use_cache=True)
    states = torch.stack(captured, dim=1) if capture else None
    final = check_finite(model, out.last_hidden_state[:, -1], "hidden states")
    return final, states, getattr(out, model.cache_arg)


def predict(model: Model, final_states: torch.Tensor, done=lambda rows: None) -> torch.Tensor:
    """Greedy next token for final-normed states [N, H], HEAD_ROWS rows at a time (`done(rows)` after each)."""
    preds = []
    for part in chunks(len(final_states), device_rows(model, HEAD_ROWS)):
        preds.append(greedy(model, final_states[part]).to(model.device))
        done(part.stop - part.start)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def split_common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix shared by all seqs, leaving each at least one token of its own."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def cached_prefix(model: Model, prefixes: list[list[int]]):
    batch = pad_left(model, prefixes)
    _, _, cache = forward(model, batch)
    return batch["attention_mask"], cache


def suffix_batch(model: Model, prefix_mask: torch.Tensor, suffixes: list[list[int]], repeat: int) -> dict:
    """Suffix tokens after a cached prefix repeated `repeat` times per row: mask and positions continue it."""
    batch = pad_left(model, suffixes)
    prefix_mask = prefix_mask.repeat_interleave(repeat, dim=0)
    start = prefix_mask.sum(-1, keepdim=True)
    batch["position_ids"] = start + (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    batch["attention_mask"] = torch.cat([prefix_mask, batch["attention_mask"]], dim=-1)
    return batch


@torch.no_grad()
def episode_states(model: Model, episodes, fmt: PromptFormat = DEFAULT_FORMAT, batch_size: int = ROWS,
                   icl: bool = True, progress: str | None = None, by_length: bool = False):
    """theta [E, L, H] (mean over each episode's dummies) and the ICL prediction [E] for every episode
    (None when icl=False: then the ICL prompt is not run at all), in the order given.

    by_length: run the episodes in order of length (longest suffix, then prefix), so that a batch pads its rows
    to lengths close to their own: for many tasks' episodes at once, 5-9% fewer tokens. theta then changes in
    its last bits (padding changes the order of some sums), so it is off where results store theta itself."""
    skip = 0 if icl else 1
    texts = [fmt.episode_prompts(ep)[skip:] for ep in episodes]
    n_prompts = len(texts[0])
    flat = model.encode([t for group in texts for t in group])  # one tokenizer call
    per_episode = [flat[i:i + n_prompts] for i in range(0, len(flat), n_prompts)]
    cuts = [split_common_prefix(seqs) for seqs in per_episode]
    order = list(range(len(episodes)))
    if by_length:
        order.sort(key=lambda e: (max(len(s) for s in per_episode[e]) - cuts[e], cuts[e]))
    window = getattr(model.hf.config.get_text_config(), "sliding_window", None)
    thetas, icl_preds = [], []
    for part in _steps(len(episodes), device_rows(model, batch_size), progress):
        rows = order[part]
        suffixes = [s[cuts[e]:] for e in rows for s in per_episode[e]]
        if window and max(cuts[e] for e in rows) + max(map(len, suffixes)) > window:
            # a short suffix is padded after the cached prefix, and those pads would take places in a sliding
            # window that the prompt's own tokens hold when it runs alone: run the prompts whole instead
            batch, cache = pad_left(model, [s for e in rows for s in per_episode[e]]), None
        else:
            prefix_mask, cache = cached_prefix(model, [per_episode[e][0][:cuts[e]] for e in rows])
            cache.batch_repeat_interleave(n_prompts)
            batch = suffix_batch(model, prefix_mask, suffixes, n_prompts)
        final, states, _ = forward(model, batch, cache=cache, capture=True)
        states = states.view(len(rows), n_prompts, *states.shape[1:])
        thetas.append(states[:, 1 - skip:].mean(dim=1))
        if icl:
            icl_preds.append(predict(model, final.view(len(rows), n_prompts, -1)[:, 0]))
    given = torch.tensor(order).argsort().to(model.device)  # sorted position of each episode
    return torch.cat(thetas)[given], (torch.cat(icl_preds)[given] if icl else None)


@torch.no_grad()
def layer_sweep(model: Model, seqs: list[list[int]], theta: torch.Tensor, layers=None,
                progress: str | None = None) -> torch.Tensor:
    """Greedy next token of each prompt with theta patched at each layer: [n_prompts, len(layers)].

    theta is [n_prompts, n_layers, H] (each prompt its own) or [n_layers, H] (shared by all prompts).
    """
    return layer_sweeps(model, seqs, [theta], [layers], progress)[0]


class Added(NamedTuple):
    """A vector ([H], [n_layers, H] or [n_prompts, n_layers, H]) to add to each prompt's own last-token state
    at the layer (a function vector), where a plain theta replaces that state."""

    vector: torch.Tensor


@torch.no_grad()
def layer_sweeps(model: Model, seqs: list[list[int]], thetas: list, layers: list | None = None,
                 progress: str | None = None) -> list[torch.Tensor]:
    """`layer_sweep` of the same prompts for each theta in `thetas` (with its own list of layers in `layers`,
    None for all; an `Added` vector is added to the prompt's own state): the prompts before their last token
    run once for all of them, not once per theta, and at each layer the rows of every theta patched there go
    through the layers after it in one forward. The own states come from the last token run once unpatched."""
    layers = [None] * len(thetas) if layers is None else layers
    layers = [list(range(model.n_layers)) if ls is None else [model.check_layer(l) for l in ls] for ls in layers]
    added = [isinstance(t, Added) for t in thetas]
    # .to(): e.g. a stored library on the CPU, a model on the GPU
    thetas = [_per_prompt(model, t.vector if a else t, len(seqs)) for t, a in zip(thetas, added)]
    out: list[list[torch.Tensor]] = [[] for _ in thetas]
    rows = len(seqs) * sum(map(len, layers))  # each (prompt, layer) row goes through the decoder, then the head
    step = max(1, device_rows(model, SWEEP_ROWS) // len(thetas))  # queries per chunk: rows per forward stay bounded
    with tqdm(total=2 * rows, desc=progress, unit="row", leave=False, disable=not progress) as bar:
        for part in chunks(len(seqs), step):
            base = last_token_batch(model, seqs[part])
            own = _own_states(model, *base) if any(added) else None
            repeated = {1: base}  # the prefix repeated r times (query-major rows), for layers that r thetas share
            finals: list[dict[int, torch.Tensor]] = [{} for _ in thetas]
            for layer in sorted(set().union(*layers)):
                members = [i for i, ls in enumerate(layers) if layer in ls]
                r = len(members)
                if r not in repeated:
                    repeated[r] = _repeat_prefix(base, r)
                batch, cache = repeated[r]
                states = torch.stack([thetas[i][part, layer] + own[:, layer] if added[i] else thetas[i][part, layer]
                                      for i in members], dim=1).flatten(0, 1)
                final = run_after(model, batch, cache, layer, states).view(-1, r, states.shape[-1])
                for j, i in enumerate(members):
                    finals[i][layer] = final[:, j]
                bar.update(len(states))
            for theta_layers, theta_finals, answers in zip(layers, finals, out):
                states = torch.stack([theta_finals[layer] for layer in theta_layers], dim=1).flatten(0, 1)
                answers.append(predict(model, states, bar.update).view(-1, len(theta_layers)))
    return [torch.cat(answers) for answers in out]


def _per_prompt(model: Model, theta: torch.Tensor, n: int) -> torch.Tensor:
    """theta as [n, n_layers, H] on the model's device and dtype, from [H], [n_layers, H] or [n, n_layers, H]."""
    theta = theta.to(model.device, model.dtype)
    return theta.expand(n, model.n_layers, -1) if theta.dim() < 3 else theta


def _own_states(model: Model, batch: dict, cache) -> torch.Tensor:
    """Every layer's state [n, n_layers, H] of a one-token batch run unpatched after its cached prefix, which is
    then cropped back."""
    _, states, _ = forward(model, batch, cache=cache, capture=True)
    for kv in cache.layers:
        kv.crop(-1)
    return states


def _repeat_prefix(prefix, r: int):
    """A `last_token_batch` with each row repeated r times in a row (its own copy of the cache)."""
    batch, cache = prefix
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(r)
    return {name: value.repeat_interleave(r, dim=0) for name, value in batch.items()}, cache


def last_token_batch(model: Model, seqs: list[list[int]]):
    """The prompts minus their last token run once (KV cache, recording past states so that crop can also roll
    back a full sliding-window layer), and the one-token batch of their last tokens that follows it."""
    prefix_mask, cache = cached_prefix(model, [s[:-1] for s in seqs])
    cache.activate_past_recording()
    return suffix_batch(model, prefix_mask, [[s[-1]] for s in seqs], 1), cache


@torch.no_grad()
def sweep_states(model: Model, seqs: list[list[int]], theta: torch.Tensor, layers: list[int], prefix=None):
    """For each of `layers` in turn, the final-normed last-token states [n, H] of the prompts with theta
    [n, n_layers, H] patched at that layer. The prompts minus their last token run once (KV cache; or pass
    `prefix`, their `last_token_batch`, to share it), then one forward per layer."""
    batch, cache = prefix or last_token_batch(model, seqs)
    for layer in layers:
        yield run_after(model, batch, cache, layer, theta[:, layer])


class _Given(torch.nn.Module):
    """Stands in for decoder layers 0..L: outputs the state after L without computing anything."""

    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.states = states

    def forward(self, *args, **kwargs):
        return self.states


def run_after(model: Model, batch: dict, cache, layer: int, states: torch.Tensor) -> torch.Tensor:
    """Final-normed state [B, H] of a one-token batch after a cached prefix, when the state after `layer` is
    `states` [B, H]: only the layers after `layer` run. The cache is then cropped back to the prefix.

    The layers up to `layer` are swapped for a stand-in in the model's layer list (not cut out of it), so each
    family's forward still finds its per-layer data at the right position (Gemma 3 and Qwen2 look up
    `config.layer_types[i]` by loop index; attention modules address the cache by their own layer_idx)."""
    with stand_in(model.layers, layer, _Given(states[:, None].contiguous())):  # contiguous, as the patch hook writes it
        final, _, _ = forward(model, batch, cache=cache)
    for kv in cache.layers[layer + 1:]:  # the layers that ran appended the token
        kv.crop(-1)
    return final


@torch.no_grad()
def next_tokens(model: Model, seqs: list[list[int]], batch_size: int = PREDICT_ROWS, states: bool = False):
    """Unpatched greedy next token per prompt (zero-shot baseline, or ICL without prefix sharing); with `states`,
    also every layer's last-token state [n, L, H] from the same pass: (tokens, states)."""
    preds, captured = [], []
    for part in chunks(len(seqs), device_rows(model, batch_size)):
        final, layer_states, _ = forward(model, pad_left(model, seqs[part]), capture=states)
        preds.append(predict(model, final))
        captured.append(layer_states)
    return (torch.cat(preds), torch.cat(captured)) if states else torch.cat(preds)
