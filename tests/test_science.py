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
