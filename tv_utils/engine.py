"""Fast engine: the same computations as `interventions`, arranged to skip work that cannot change the answer.

- An episode's ICL prompt and its dummy prompts share the demonstrations: run that prefix once (KV cache)
  and only the short suffixes per prompt; theta for every layer comes out of the same pass.
- A layer sweep patches only the query's last token, so the tokens before it are run once per query and
  their keys/values reused for every layer; the last token of all (query, layer) pairs runs as one batch.
- Only last-position logits are needed, and all their rows go through the unembedding in large products.

It drives the transformers modules with plain forward hooks (the nnsight API stays in `interventions`);
tests check that both give the same answers.
"""

from __future__ import annotations

import os

import torch

from .interventions import _chunks, _hidden, pad_left
from .models import Model
from .prompts import DEFAULT_FORMAT, PromptFormat

HEAD_ROWS = 256  # rows per unembedding product: large enough to stream the head's weights efficiently
SWEEP_ROWS = int(os.environ.get("TV_UTILS_SWEEP_ROWS", 1024))  # (query, layer) rows per forward


def _forward(model: Model, batch: dict, cache=None, capture: bool = False, patch: dict | None = None):
    """One pass of the decoder stack (no head). patch maps layer -> (row index, values) for the last token.

    Returns the final-normed last-token state [B, H], the per-layer last-token states [B, L, H] when
    capture is set, and the KV cache.
    """
    captured: list = [None] * model.n_layers

    def hook(layer_idx):
        def run(_module, _args, output):
            hidden = _hidden(output)
            if patch and layer_idx in patch:
                rows, values = patch[layer_idx]
                hidden[rows, -1] = values
            if capture:
                captured[layer_idx] = hidden[:, -1].clone()

        return run

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(model.layers)]
    try:
        out = model.base(**batch, past_key_values=cache, use_cache=True)
    finally:
        for h in handles:
            h.remove()
    states = torch.stack(captured, dim=1) if capture else None
    return out.last_hidden_state[:, -1], states, out.past_key_values


def predict(model: Model, final_states: torch.Tensor) -> torch.Tensor:
    """Greedy next token for final-normed states [N, H], through the unembedding in large chunks."""
    preds = []
    for part in _chunks(len(final_states), HEAD_ROWS):
        preds.append(model.unembed(final_states[part]).argmax(-1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def _split_common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix shared by all seqs, leaving each at least one token of its own."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def _cached_prefix(model: Model, prefixes: list[list[int]]):
    batch = pad_left(model, prefixes)
    _, _, cache = _forward(model, batch)
    return batch["attention_mask"], cache


def _suffix_batch(model: Model, prefix_mask: torch.Tensor, suffixes: list[list[int]], repeat: int) -> dict:
    """Suffix tokens after a cached prefix repeated `repeat` times per row: mask and positions continue it."""
    batch = pad_left(model, suffixes)
    prefix_mask = prefix_mask.repeat_interleave(repeat, dim=0)
    start = prefix_mask.sum(-1, keepdim=True)
    batch["position_ids"] = start + (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    batch["attention_mask"] = torch.cat([prefix_mask, batch["attention_mask"]], dim=-1)
    return batch


@torch.no_grad()
def episode_states(model: Model, episodes, fmt: PromptFormat = DEFAULT_FORMAT, batch_size: int = 32):
    """theta [E, L, H] (mean over each episode's dummies) and the ICL prediction [E] for every episode."""
    thetas, icl = [], []
    for part in _chunks(len(episodes), batch_size):
        eps = episodes[part]
        per_episode = [model.encode(fmt.episode_prompts(ep)) for ep in eps]
        n_prompts = len(per_episode[0])
        cuts = [_split_common_prefix(seqs) for seqs in per_episode]
        prefix_mask, cache = _cached_prefix(model, [seqs[0][:c] for seqs, c in zip(per_episode, cuts)])
        cache.batch_repeat_interleave(n_prompts)
        suffixes = [s[c:] for seqs, c in zip(per_episode, cuts) for s in seqs]
        batch = _suffix_batch(model, prefix_mask, suffixes, n_prompts)
        final, states, _ = _forward(model, batch, cache=cache, capture=True)
        states = states.view(len(eps), n_prompts, *states.shape[1:])
        thetas.append(states[:, 1:].mean(dim=1))
        icl.append(predict(model, final.view(len(eps), n_prompts, -1)[:, 0]))
    return torch.cat(thetas), torch.cat(icl)


@torch.no_grad()
def layer_sweep(model: Model, seqs: list[list[int]], theta: torch.Tensor, layers=None) -> torch.Tensor:
    """Greedy next token of each prompt with theta patched at each layer: [n_prompts, len(layers)].

    theta is [n_prompts, n_layers, H] (each prompt its own) or [n_layers, H] (shared by all prompts).
    """
    layers = list(range(model.n_layers)) if layers is None else [model.check_layer(l) for l in layers]
    if theta.dim() == 2:
        theta = theta.expand(len(seqs), -1, -1)
    theta = theta.to(model.dtype)
    per_chunk = max(1, SWEEP_ROWS // len(layers))
    out = []
    for part in _chunks(len(seqs), per_chunk):
        chunk = seqs[part]
        n, k = len(chunk), len(layers)
        prefix_mask, cache = _cached_prefix(model, [s[:-1] for s in chunk])
        cache.batch_repeat_interleave(k)
        batch = _suffix_batch(model, prefix_mask, [[s[-1]] for s in chunk for _ in layers], k)
        rows = torch.arange(n, device=theta.device) * k
        patch = {layer: (rows + j, theta[part][:, layer]) for j, layer in enumerate(layers)}
        final, _, _ = _forward(model, batch, cache=cache, patch=patch)
        out.append(predict(model, final).view(n, k))
    return torch.cat(out)


@torch.no_grad()
def next_tokens(model: Model, seqs: list[list[int]], batch_size: int = 64) -> torch.Tensor:
    """Unpatched greedy next token per prompt (zero-shot baseline, or ICL without prefix sharing)."""
    preds = []
    for part in _chunks(len(seqs), batch_size):
        final, _, _ = _forward(model, pad_left(model, seqs[part]))
        preds.append(predict(model, final))
    return torch.cat(preds)
