"""The protocol through nnsight traces only (the NDIF path), in nnsight's local simulation of remote execution
(each trace serialized, our modules hidden, then run), gives the same tables as the local engine."""

import pytest
import torch

from tv_utils.experiments import run_tasks
from tv_utils.protocol import Protocol
from tv_utils.interventions import patched_answers, patched_logits
from tv_utils.tasks import make_task

pytestmark = pytest.mark.tiny

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tasks_a_random_model_can_score(model):
    """A random model scores 0 on real tasks, which would make equal tables meaningless. So the second task's
    answer is the character this model most often says after `x->`: its accuracies are neither all 0 nor 1."""
    said = patched_logits(model, model.encode([f"example:{c}->" for c in LETTERS]), None, None).argmax(-1)
    texts = [model.decode_token(t).strip() for t in said.tolist()]
    favourite = max((t for t in texts if len(t) == 1 and t.isprintable() and t not in "->"), key=texts.count)
    return [make_task("shift", list(zip(LETTERS[:-1], LETTERS[1:]))),
            make_task("favourite", [(c, favourite) for c in LETTERS])]


def test_remote_protocol_equals_the_engine(tiny_float32):
    tasks = tasks_a_random_model_can_score(tiny_float32)
    protocol = Protocol(k=3, n_dev=6, n_test=6, seed=1)
    local = run_tasks(tiny_float32, tasks, protocol, progress=False)
    remote = run_tasks(tiny_float32, tasks, protocol, progress=False, remote="local")
    for engine_table, traced_table in zip(local, remote):
        assert engine_table.equals(traced_table), (engine_table, traced_table)
    scored = local[0][["baseline", "icl", "tv"]].to_numpy().sum() + local[1]["dev_acc"].sum()
    assert scored > 0, local  # the tables hold real hits, not only zeros


def test_answers_of_a_multi_invoke_trace_equal_single_traces(tiny_llama):
    seqs = tiny_llama.encode(["example:ab-> c\nexample:q->", "example:hello->", "x->"])
    theta = torch.randn(len(seqs), tiny_llama.n_layers, tiny_llama.hf.config.hidden_size)
    answers = patched_answers(tiny_llama, seqs, theta, [None, 0, 2], remote="local")
    expected = [patched_logits(tiny_llama, seqs, None, None)] + [
        patched_logits(tiny_llama, seqs, theta[:, layer], layer) for layer in (0, 2)]
    assert torch.equal(answers, torch.stack([e.argmax(-1) for e in expected], dim=1))
