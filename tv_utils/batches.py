"""Batching helpers shared by the nnsight traces and the fast engine: left padding, chunks, layer outputs."""

from __future__ import annotations

import torch

__all__ = ["chunks", "layer_hidden", "pad_left", "PREDICT_ROWS", "ROWS"]

ROWS = 32  # prompts per batch of a trace or an engine pass on a CPU (engine.device_rows scales it on a GPU)
PREDICT_ROWS = 64  # prompts per batch of a plain next-token pass (no states kept, so twice as many)


def layer_hidden(output):
    """A decoder layer's hidden states, whether the layer returns a tensor or a tuple (GPT-J). Never
    `output[0]` on a tensor: that would silently take batch row 0."""
    return output[0] if isinstance(output, tuple) else output


def pad_left(model, seqs: list[list[int]]) -> dict[str, torch.Tensor]:
    """Left-padded ids, attention mask and explicit position ids (so padding never shifts positions)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), model.pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = model.device if model.device.type != "meta" else "cpu"  # meta: a remote model's inputs stay here
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def chunks(n: int, size: int):
    """Slices covering range(n), `size` at a time."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
