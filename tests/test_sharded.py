"""A model split by accelerate (some decoder layers offloaded to disk, run through accelerate's hooks) gives
the same θ, logits and protocol tables as the same model in one piece."""

import pytest
import torch

from tv_utils import interventions as iv
from tv_utils.experiments import run_tasks
from tv_utils.protocol import Protocol
from tv_utils.models import load_model
from tv_utils.tasks import make_task

pytestmark = pytest.mark.tiny

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def test_layers_offloaded_to_disk_give_the_same_answers(tiny_llama_folder, tmp_path):
    whole = load_model(str(tiny_llama_folder), device="cpu")
    split = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
             "model.layers.1": "disk", "model.layers.2": "cpu", "model.layers.3": "disk",
             "model.norm": "cpu", "lm_head": "cpu"}
    sharded = load_model(str(tiny_llama_folder), device_map=split, offload_folder=str(tmp_path))
    assert sharded.hf.model.layers[1].mlp.down_proj.weight.device.type == "meta"  # really on disk
    seqs = whole.encode(["example:ab-> c\nexample:q->", "example:hello->", "x->"])
    states = iv.capture(whole, seqs)
    torch.testing.assert_close(iv.capture(sharded, seqs), states, atol=1e-5, rtol=0)
    torch.testing.assert_close(iv.patched_logits(sharded, seqs, states[0, 2], 2),
                               iv.patched_logits(whole, seqs, states[0, 2], 2), atol=1e-5, rtol=0)
    tasks = [make_task("shift", list(zip(LETTERS[:-1], LETTERS[1:])))]
    protocol = Protocol(k=3, n_dev=5, n_test=4)
    for a, b in zip(run_tasks(sharded, tasks, protocol, progress=False),
                    run_tasks(whole, tasks, protocol, progress=False)):
        assert a.equals(b)
