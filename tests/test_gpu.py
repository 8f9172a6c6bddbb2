"""The same code on CUDA: patched answers on a small random model agree between CPU and GPU.

CI machines have no GPU, so this module is skipped there; it runs on the lent GPU machine
(see bench/README.md for the command and its output).
"""

import copy

import pytest
import torch

from tv_utils import engine
from tv_utils import interventions as iv
from tv_utils.models import from_config
from tv_utils.prompts import DEFAULT_FORMAT
from tv_utils.tasks import get_task, sample_episodes

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI machines have none")]


@pytest.fixture(scope="module")
def pair(tokenizer):
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    cpu = from_config(config, tokenizer, name="small-llama")
    gpu = copy.deepcopy(cpu)
    gpu.hf.to("cuda")
    return cpu, gpu


def test_same_patched_answers_on_cpu_and_gpu(pair):
    cpu, gpu = pair
    episodes = sample_episodes(get_task("next_letter"), 16, k=4, split="dev")
    queries = cpu.encode([DEFAULT_FORMAT.query(ep.query[0]) for ep in episodes])
    theta_cpu, icl_cpu = engine.episode_states(cpu, episodes)
    theta_gpu, icl_gpu = engine.episode_states(gpu, episodes)
    torch.testing.assert_close(theta_gpu.cpu(), theta_cpu, atol=1e-3, rtol=1e-3)
    assert torch.equal(icl_gpu.cpu(), icl_cpu)
    assert torch.equal(engine.layer_sweep(gpu, queries, theta_gpu).cpu(), engine.layer_sweep(cpu, queries, theta_cpu))
    logits_cpu = iv.patched_logits(cpu, queries, theta_cpu[:, 3], 3)
    assert cpu.device.type == "cpu" and logits_cpu.device.type == "cpu"  # wrapping must not move the model
    logits_gpu = iv.patched_logits(gpu, queries, theta_gpu[:, 3], 3)
    torch.testing.assert_close(logits_gpu.cpu(), logits_cpu, atol=1e-3, rtol=1e-3)
