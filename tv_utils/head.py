"""The greedy next token: the exact argmax of the float32 unembedding, without writing all N x vocab logits.

Gemma's head has 262k rows, so a layer sweep spends most of its matrix work here. Two ways, with the same
answers (but where two logits agree to float32 rounding, as between any two machines):
- `exact`: float32 products a block of VOCAB_BLOCK vocabulary entries at a time, each block's maximum kept
  (its logits stay in cache); the first maximum wins, as in argmax.
- `screened`: the same products in bfloat16, whose error is bounded (`SCREEN_SLACK`); only the few tokens
  that the bound cannot rule out get their float32 logit, and the argmax is taken over those. Used on CPUs
  with AMX (`screen_pays`), where it was measured faster than `exact` (bench/README.md).
"""

from __future__ import annotations

import functools
import weakref
from pathlib import Path

import torch

from .batches import chunks

__all__ = ["cpu_has_amx", "greedy", "SCREEN_MAX_HIDDEN", "SCREEN_SLACK", "screen_pays", "VOCAB_BLOCK"]

VOCAB_BLOCK = 4096  # vocabulary entries per product: 1024 x 4096 float32 logits (16 MB) stay in cache

# |bf16 logit - float32 logit| <= SCREEN_SLACK * |state| * |weight row| for any state and weight row of at most
# SCREEN_MAX_HIDDEN entries: rounding both factors to bf16 (relative error 2^-8 each: 2^-7 of sum |h_i w_i|,
# which is <= |h| |w|), the product's bf16 result (2^-8), and the float32 sums of both logits (n 2^-24 each).
SCREEN_SLACK = 2.0 ** -7 + 2.0 ** -8 + 2.0 ** -10
SCREEN_MAX_HIDDEN = 4096  # 2 x 4096 x 2^-24 + 2^-15 < 2^-10 (Gemma 3 270M: 640)
CANDIDATE_ROWS = 4096  # screened tokens whose float32 logit is computed at a time (about 8 to 30 per state)

_bf16_weights: dict[int, tuple] = {}  # id(weight) -> ((its version, VOCAB_BLOCK), bf16 copy, block norms)


def greedy(model, states: torch.Tensor, screen: bool | None = None) -> torch.Tensor:
    """argmax over the vocabulary of the unembedding of `states` [N, H], the first maximum winning as in argmax.
    screen: None takes the bf16 screen where it pays (`screen_pays`), True wherever its bound holds."""
    head = model.unembed
    screen = screen_pays(model) if screen is None else screen
    if screen and len(states) and _screenable(head):
        return _screened(head.weight, states)
    return _exact(head.weight, head.bias, states)


def _screenable(head) -> bool:
    """The screen's bound holds: float32 weights, no bias, at most SCREEN_MAX_HIDDEN wide."""
    return head.bias is None and head.weight.dtype == torch.float32 and head.weight.shape[1] <= SCREEN_MAX_HIDDEN


def _exact(weight: torch.Tensor, bias: torch.Tensor | None, states: torch.Tensor) -> torch.Tensor:
    best_value = best_index = None
    for block in chunks(weight.shape[0], VOCAB_BLOCK):
        logits = torch.nn.functional.linear(states, weight[block], None if bias is None else bias[block])
        value, index = logits.max(-1)  # the first maximum's index, as argmax gives, in one pass (argmax: 2.7x slower)
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value  # strict: on a tie the earlier block's (lower) index stays, as in argmax
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index + block.start, best_index)
    return best_index


def _screened(weight: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Pass 1: each block's largest bf16 logit per row, hence a lower bound `floor` on the row's largest float32
    logit; pass 2: in the blocks whose bound reaches `floor`, the tokens whose bound does; their float32 logits
    decide. The argmax (and every token tied with it) always survives both passes."""
    low, block_norms = _bf16_copy(weight)
    blocks = list(chunks(weight.shape[0], VOCAB_BLOCK))
    query = states.to(torch.bfloat16)
    slack = SCREEN_SLACK * states.norm(dim=-1, keepdim=True) * block_norms  # [N, blocks]: each logit's error bound
    tops = torch.stack([torch.nn.functional.linear(query, low[block]).amax(-1) for block in blocks], 1).float()
    floor = (tops - slack).amax(-1, keepdim=True)  # <= the largest float32 logit of each row
    reach = tops + slack >= floor
    rows, tokens = [], []
    for i, block in enumerate(blocks):
        (some,) = reach[:, i].nonzero(as_tuple=True)
        if len(some):
            logits = torch.nn.functional.linear(query[some], low[block]).float()
            row, token = (logits + slack[some, i:i + 1] >= floor[some]).nonzero(as_tuple=True)
            rows.append(some[row])
            tokens.append(token + block.start)
    row, token = torch.cat(rows), torch.cat(tokens)
    # float32 logits summed in another order than a product's: the last bits may differ from `_exact`'s, which
    # changes an answer only where two logits agree to float32 rounding (as on a GPU)
    logit = torch.cat([(states[r] * weight[t]).sum(-1)  # a few thousand rows gathered at a time
                       for r, t in zip(row.split(CANDIDATE_ROWS), token.split(CANDIDATE_ROWS))])
    best = torch.full((len(states),), -torch.inf, device=states.device).scatter_reduce(0, row, logit, "amax")
    tied = logit == best[row]
    first = torch.full((len(states),), weight.shape[0], device=states.device)
    return first.scatter_reduce(0, row[tied], token[tied], "amin")  # the lowest index among the maxima


def _bf16_copy(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight in bf16 and each vocabulary block's largest row norm, made once per weight (and again if it
    is edited in place)."""
    key, made_for = id(weight), (weight._version, VOCAB_BLOCK)
    made, low, norms = _bf16_weights.get(key, (None, None, None))
    if made != made_for:
        if key not in _bf16_weights:  # the entry goes with the weight
            weakref.finalize(weight, _bf16_weights.pop, key, None)
        with torch.no_grad():
            low = weight.detach().to(torch.bfloat16)
            norms = torch.stack([weight[block].detach().norm(dim=-1).max()
                                 for block in chunks(weight.shape[0], VOCAB_BLOCK)])
        _bf16_weights[key] = (made_for, low, norms)
    return low, norms


def screen_pays(model) -> bool:
    """True for a screenable head of at least 8 blocks on a CPU with AMX (`cpu_has_amx`). Elsewhere the screen
    does not pay: not faster with AVX512-BF16 alone (an AMD EPYC, 2026-12-05), ~7x slower on AVX2 only."""
    weight = model.unembed.weight
    return (weight.device.type == "cpu" and weight.shape[0] >= 8 * VOCAB_BLOCK and _screenable(model.unembed)
            and cpu_has_amx())


@functools.cache
def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU lists AMX-BF16 (Linux's /proc/cpuinfo; elsewhere False). A fact of the machine, not a
    timing: which way the head runs never depends on the load."""
    try:
        flags = Path(cpuinfo).read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags
