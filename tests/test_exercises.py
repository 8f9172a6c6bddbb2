"""The notebooks' exercises: every one is rated, hinted, checked and solved in the agreed shape; each folded
solution (read from the notebook: the only copy) passes its checker on a tiny random Llama or toy data;
wrong answers and stubs are rejected with a useful message."""

import inspect
import json
import linecache
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tv_utils import answer_key
from tv_utils import exercises as ex
from tv_utils.interventions import pad_left

NOTEBOOKS = answer_key.notebook_paths()


def notebook_exercises():
    """(notebook, number, checker name, function name, solution code) for every exercise; `answer_key.exercises`
    rejects one not in the course's shape (ratings as text with an estimated time, a hint and a stronger hint
    that do not give the solution's code, stub, check call, folded solution)."""
    return [(e.notebook, e.number, e.checker, e.function, e.solution) for path in NOTEBOOKS
            for e in answer_key.exercises(path)]


EXERCISES = notebook_exercises()


def test_every_notebook_has_its_rated_exercises():
    per_notebook = {}
    for notebook, *_ in EXERCISES:
        per_notebook[notebook] = per_notebook.get(notebook, 0) + 1
    for path in NOTEBOOKS:
        need = 2 if path.name[:2] in ("02", "03", "04", "05", "06") else 1
        assert per_notebook.get(path.stem, 0) >= need, f"{path.name}: {per_notebook.get(path.stem, 0)} exercises"
    # no solution is executed in the notebook: the function is only ever defined by the stub
    for path in NOTEBOOKS:
        code = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        for notebook, number, _, name, _ in EXERCISES:
            if notebook == path.stem:
                assert sum(f"def {name}(" in c for c in code) == 1, f"{path.name}: {name} defined twice"


def _solution(code: str, name: str):
    """The notebook's solution, defined with the names its notebook imports."""
    from operator import attrgetter

    import pandas as pd

    from tv_utils import interventions
    from tv_utils.analyses import function_vectors as fv
    from tv_utils.protocol import accuracy, best_of
    from tv_utils.prompts import DEFAULT_FORMAT

    namespace = {"np": np, "pd": pd, "torch": torch, "pad_left": pad_left,
                 "capture": interventions.capture, "patched_logits": interventions.patched_logits,
                 "task_vectors": interventions.task_vectors, "accuracy": accuracy, "best_of": best_of,
                 "DEFAULT_FORMAT": DEFAULT_FORMAT, "fv": fv, "attrgetter": attrgetter}
    filename = f"<solution of {name}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)  # nnsight reads the source
    exec(compile(code, filename, "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize("notebook, number, checker, name, code", EXERCISES, ids=[e[1] for e in EXERCISES])
def test_notebook_solution_passes_its_checker(capsys, tiny_llama, notebook, number, checker, name, code):
    check = getattr(ex, checker)
    needs_model = "model" in inspect.signature(check).parameters
    args = (tiny_llama,) if needs_model else ()
    assert check(_solution(code, name), *args) is True, capsys.readouterr().out
    assert capsys.readouterr().out.startswith("✅ Correct:")
    for unattempted in (stub, returns_none):
        assert check(unattempted, *args) is False
        assert capsys.readouterr().out.strip() == ex.NOT_ATTEMPTED


# ---------------------------------------------------------------- wrong answers and stubs


def stub(*args):
    raise NotImplementedError  # YOUR CODE HERE


def returns_none(*args):
    pass


def unpatched(model, seqs, theta, layer):
    batch = pad_left(model, seqs)
    with model.nn.trace(batch, logits_to_keep=1):
        logits = model.nn.output.logits[:, -1].save()
    return logits


def patched_everywhere(model, seqs, theta, layer):
    batch = pad_left(model, seqs)
    with model.nn.trace(batch, logits_to_keep=1):
        out = model.nn_layers()[layer].output
        hidden = out[0] if isinstance(out, tuple) else out
        hidden[:] = theta.to(model.dtype)
        logits = model.nn.output.logits[:, -1].save()
    return logits


def no_norm(model, vectors):
    with torch.no_grad():
        return torch.log_softmax(model.unembed(vectors.to(model.dtype)).float(), dim=-1)


def raw_logits(model, vectors):
    with torch.no_grad():
        return model.unembed(model.final_norm(vectors.to(model.dtype))).float()


def loo_keeps_self(X, labels):
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    return float(np.mean(labels[(1 - unit @ unit.T).argmin(axis=1)] == labels))


def follows_first_row(table, task_a, task_b):
    row = table[(table.task_a == task_a) & (table.task_b == task_b)].iloc[0]
    return task_b if row.acc_b > row.acc_a else task_a


def best_single_task_layer(per_layer):
    return int(per_layer.loc[per_layer.dev_acc.idxmax(), "layer"])


def solution(name: str):
    return next(_solution(code, n) for *_, n, code in EXERCISES if n == name)


PLAIN = [
    (ex.check_icl_prompt, "build_prompt", lambda d, q: "\n".join(f"example:{x}->{y}" for x, y in d) + f"\nexample:{q}->"),
    (ex.check_best_layer, "best_layer", best_single_task_layer),
    (ex.check_knn_accuracy, "loo_1nn_accuracy", loo_keeps_self),
    (ex.check_follows, "follows", follows_first_row),
]


def _verdict(capsys, checker, *args):
    ok = checker(*args)
    out = capsys.readouterr().out
    return ok, out


@pytest.mark.parametrize("checker, name, wrong", PLAIN, ids=lambda v: getattr(v, "__name__", ""))
def test_plain_checkers_reject_a_wrong_answer(capsys, checker, name, wrong):
    ok, out = _verdict(capsys, checker, wrong)
    assert ok is False and out.startswith("❌ Not quite:")


def test_plain_checkers_explain_common_mistakes(capsys):
    assert not ex.check_best_layer(best_single_task_layer)
    assert "single best task" in capsys.readouterr().out
    assert not ex.check_knn_accuracy(loo_keeps_self)
    assert "found itself" in capsys.readouterr().out
    assert not ex.check_follows(lambda t, a, b: 1 / 0)
    assert "raised ZeroDivisionError" in capsys.readouterr().out


def test_checkers_take_real_tables_too(capsys):
    per_layer = ex.example_per_layer().assign(dev_acc=lambda d: d.dev_acc[::-1].to_numpy())
    assert ex.check_best_layer(solution("best_layer"), per_layer)
    X, labels = ex.example_vectors(seed=5)
    assert ex.check_knn_accuracy(solution("loo_1nn_accuracy"), X, labels)
    assert ex.check_silhouette(solution("silhouette"), X, labels)
    assert ex.check_follows(solution("follows"), ex.example_conflict_table())
    capsys.readouterr()


def test_check_patch_theta(capsys, tiny_llama):
    ok, out = _verdict(capsys, ex.check_patch_theta, unpatched, tiny_llama)
    assert not ok and "unpatched logits" in out
    ok, out = _verdict(capsys, ex.check_patch_theta, patched_everywhere, tiny_llama)
    assert not ok and out.startswith("❌ Not quite:")


def test_check_project_to_vocab(capsys, tiny_llama):
    ok, out = _verdict(capsys, ex.check_project_to_vocab, no_norm, tiny_llama)
    assert not ok and "final norm" in out
    ok, out = _verdict(capsys, ex.check_project_to_vocab, raw_logits, tiny_llama)
    assert not ok and "log_softmax" in out


def read_first_row(model, seqs, layer):
    batch = pad_left(model, seqs)
    with model.nn.trace(batch, logits_to_keep=1):
        out = model.nn_layers()[layer].output
        hidden = out[0]  # on a tensor: the first prompt only
        theta = hidden[-1].save()
    return theta.expand(len(seqs), -1)


def read_row_zero_positions(model, seqs, layer):
    batch = pad_left(model, seqs)
    with model.nn.trace(batch, logits_to_keep=1):
        hidden = model.nn_layers()[layer].output[0]  # a tuple habit on a tensor: [seq, hidden] of prompt 0
        theta = hidden[:, -1].save()
    return theta


def read_without_save(model, seqs, layer):
    batch = pad_left(model, seqs)
    with model.nn.trace(batch, logits_to_keep=1):
        theta = model.nn_layers()[layer].output[:, -1]  # no .save(): gone after the trace
    return theta


def read_next_layer(model, seqs, layer):
    return solution("read_theta")(model, seqs, layer + 1)


def first_dummy_only(model, demos, dummies, layer):
    return solution("mean_theta")(model, demos, dummies[:1], layer)


def choose_on_test(model, dev, test):
    return solution("choose_layer")(model, test, test)


def euclidean_silhouette(X, labels):
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(X, labels))


def theta_on_query_alone(model, demos_a, query, theta_b, layer):
    from tv_utils.interventions import patched_logits
    from tv_utils.prompts import DEFAULT_FORMAT

    return patched_logits(model, model.encode([DEFAULT_FORMAT.query(query)]), theta_b, layer)[0]


def one_based_rank(logp, answer_ids):
    return solution("answer_rank")(logp, answer_ids) + 1


def demos_as_dummies(model, pairs, queries, layer):
    return solution("answer_with_theta")(model, pairs[2:] + pairs[:2], queries, layer)


@pytest.mark.parametrize("checker, wrong, why", [
    (ex.check_read_theta, read_first_row, "batch row 0"),
    (ex.check_read_theta, read_next_layer, "you returned the output of layer"),
    (ex.check_read_theta, read_row_zero_positions, "out[0] took batch row 0"),
    (ex.check_read_theta, read_without_save, "Did you forget .save()?"),
    (ex.check_mean_theta, first_dummy_only, "single dummy prompt"),
    (ex.check_conflict_logits, theta_on_query_alone, "query alone"),
    (ex.check_own_task, demos_as_dummies, "the last two inputs"),
    (ex.check_choose_layer, choose_on_test, "choose on dev"),
], ids=lambda v: getattr(v, "__name__", ""))
def test_model_checkers_explain_common_mistakes(capsys, gemma, checker, wrong, why):
    """On the real model: a tiny random one answers alike whatever θ it gets, so some mistakes go unseen."""
    ok, out = _verdict(capsys, checker, wrong, gemma)
    assert not ok and out.startswith("❌ Not quite:") and why in out, out


def test_plain_checkers_catch_method_mistakes(capsys):
    X, labels = ex.example_vectors(seed=2)
    assert not ex.check_silhouette(euclidean_silhouette, X, labels)
    assert "Euclidean" in capsys.readouterr().out
    assert not ex.check_answer_rank(one_based_rank)
    assert "start at 1" in capsys.readouterr().out


def next_head(model, states, layer, head):
    return solution("head_contribution")(model, states, layer, (head + 1) % states.shape[1])


def flipped_effect(model, seqs, answers, layer, head, state):
    return -solution("indirect_effect")(model, seqs, answers, layer, head, state)


def ranked_by_first_task(contributions, effects, k):
    first = effects[effects.task == effects.task.iloc[0]].nlargest(k, "effect")
    return sum(contributions[r.layer, r.head] for r in first.itertuples())


def test_function_vector_checkers_explain_common_mistakes(capsys, tiny_llama):
    ok, out = _verdict(capsys, ex.check_head_contribution, next_head, tiny_llama)
    assert not ok and "another head's share" in out, out
    ok, out = _verdict(capsys, ex.check_indirect_effect, flipped_effect, tiny_llama)
    assert not ok and "sign is flipped" in out, out
    ok, out = _verdict(capsys, ex.check_function_vector, ranked_by_first_task)
    assert not ok and "not by one task's effects" in out, out


def test_checker_messages_are_plain_text():
    """The messages print as plain text: markdown emphasis would show its asterisks."""
    assert not re.search(r"\*\w[\w ]*\*", Path(ex.__file__).read_text(encoding="utf-8"))
