"""The paper's claims on the embedded Gemma 3 270M, with loose thresholds (it is a small model)."""

import pytest

from tv_utils.experiments import evaluate_task
from tv_utils.protocol import Protocol

pytestmark = pytest.mark.model

PROTO = Protocol(n_dev=20, n_test=30, seed=0)


@pytest.mark.parametrize("task", ["country_capital", "antonyms", "en_fr"])
def test_task_vector_recovers_icl_far_above_baseline(gemma, task):
    summary, per_layer = evaluate_task(gemma, task, PROTO)
    assert summary["icl"] >= 0.4, summary
    assert summary["tv"] >= summary["baseline"] + 0.25, summary
    assert summary["tv"] >= 0.5 * summary["icl"], summary
    # the best layer is an intermediate one, and the last layers do much worse than it
    assert 3 <= summary["best_layer"] <= 14, summary
    assert per_layer["dev_acc"].iloc[-1] <= per_layer["dev_acc"].max() - 0.2


def test_embedded_model_is_cached_and_bos_is_its_own(gemma):
    assert gemma.info["source"].endswith("gemma3-270m") and gemma.n_layers == 18
    assert gemma.prepend_ids == ()  # Gemma's tokenizer adds <bos> itself
    assert gemma.encode(["x->"])[0][0] == gemma.tokenizer.bos_token_id


def test_screened_head_gives_the_float32_answers_on_gemma(gemma):
    """On Gemma's own final states of a layer sweep (every layer, 20 en_fr episodes), the bf16-screened head
    names the same tokens as the float32 products, where bf16 products alone name others (5 of 360 here)."""
    import torch

    from tv_utils import engine, head
    from tv_utils.prompts import DEFAULT_FORMAT
    from tv_utils.tasks import get_task, sample_episodes

    episodes = sample_episodes(get_task("en_fr"), 20, k=5, seed=0)
    theta, _ = engine.episode_states(gemma, episodes, icl=False)
    queries = gemma.encode([DEFAULT_FORMAT.query(ep.query[0]) for ep in episodes])
    states = torch.cat(list(engine.sweep_states(gemma, queries, theta, list(range(gemma.n_layers)))))
    screened = head.greedy(gemma, states, screen=True)
    assert torch.equal(screened, head.greedy(gemma, states, screen=False))
    assert len(states) == 360 and len(set(screened.tolist())) > 20  # many different answers across layers
    bf16_only = torch.nn.functional.linear(states.to(torch.bfloat16), gemma.unembed.weight.to(torch.bfloat16))
    assert (bf16_only.argmax(-1) != screened).sum() >= 2
