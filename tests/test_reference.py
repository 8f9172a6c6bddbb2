"""The batched protocol (`experiments.run_tasks`, several tasks regrouped) equals the plain-nnsight reference,
task by task."""

import pytest

from tv_utils.experiments import run_tasks
from tv_utils.protocol import Protocol
from tv_utils.interventions import reference_protocol
from tv_utils.tasks import make_task

pytestmark = pytest.mark.tiny

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def assert_same(model, tasks, protocol):
    results, per_layer, *_ = run_tasks(model, tasks, protocol, progress=False)
    assert len(results) == len(tasks)
    for task, (_, row) in zip(tasks, results.iterrows()):
        ref = reference_protocol(model, task, protocol)
        name = task if isinstance(task, str) else task.name
        assert row["task"] == name
        assert {k: row[k] for k in ("baseline", "icl", "tv", "best_layer")} == pytest.approx(
            {k: ref[k] for k in ("baseline", "icl", "tv", "best_layer")}), name
        assert per_layer.loc[per_layer.task == name, "dev_acc"].tolist() == pytest.approx(ref["dev_acc"]), name
    return results


def test_three_tasks_at_once_equal_the_reference_on_a_tiny_model(tiny_llama):
    tasks = [make_task("shift", list(zip(LETTERS[:-1], LETTERS[1:]))),
             make_task("back", list(zip(LETTERS[1:], LETTERS[:-1]))),
             make_task("upper", [(c, c.upper()) for c in LETTERS])]
    assert_same(tiny_llama, tasks, Protocol(k=3, n_dev=6, n_test=5, seed=2))


def test_three_tasks_at_once_equal_the_reference_on_gemma(gemma):
    results = assert_same(gemma, ["country_capital", "antonyms", "list_last"], Protocol(k=5, n_dev=8, n_test=8))
    assert results[["icl", "tv"]].to_numpy().sum() > 1  # real accuracies, not all zeros
