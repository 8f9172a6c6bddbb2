"""The notebooks' exercise checkers accept the reference solutions and reject wrong and unattempted ones
(plain data, or the tiny random Llama: no download)."""

import numpy as np
import pytest
import torch

from tv_utils import exercises as ex
from tv_utils.interventions import pad_left

# ---------------------------------------------------------------- the notebooks' solutions, verbatim


def build_prompt(demos, query):
    lines = [f"example:{x}-> {y}" for x, y in demos]
    lines.append(f"example:{query}->")
    return "\n".join(lines)


def patch_theta(model, seqs, theta, layer):
    batch = pad_left(model, seqs)
    with model.nn.trace(batch, logits_to_keep=1):
        out = model.nn_layers()[layer].output
        hidden = out[0] if isinstance(out, tuple) else out
        hidden[:, -1] = theta.to(model.dtype)
        logits = model.nn.output.logits[:, -1].save()
    return logits.float()


def best_layer(per_layer):
    mean = per_layer.groupby("layer")["dev_acc"].mean()
    return int(mean.idxmax())


def loo_1nn_accuracy(X, labels):
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    dist = 1 - unit @ unit.T
    np.fill_diagonal(dist, np.inf)
    return float(np.mean(labels[dist.argmin(axis=1)] == labels))


def follows(table, task_a, task_b):
    row = table[(table.task_a == task_a) & (table.task_b == task_b) & (table.method == "ICL + theta of B")].iloc[0]
    return task_b if row.acc_b > row.acc_a else task_a


def project_to_vocab(model, vectors):
    with torch.no_grad():
        h = model.final_norm(vectors.to(model.device, model.dtype))
        logits = model.unembed(h).float()
    return torch.log_softmax(logits, dim=-1)


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


PLAIN = [
    (ex.check_icl_prompt, build_prompt, lambda d, q: "\n".join(f"example:{x}->{y}" for x, y in d) + f"\nexample:{q}->"),
    (ex.check_best_layer, best_layer, best_single_task_layer),
    (ex.check_knn_accuracy, loo_1nn_accuracy, loo_keeps_self),
    (ex.check_follows, follows, follows_first_row),
]


def _verdict(capsys, checker, *args):
    ok = checker(*args)
    out = capsys.readouterr().out
    return ok, out


@pytest.mark.parametrize("checker, solution, wrong", PLAIN, ids=lambda v: getattr(v, "__name__", ""))
def test_plain_checkers(capsys, checker, solution, wrong):
    ok, out = _verdict(capsys, checker, solution)
    assert ok is True and out.startswith("✅ Correct:")
    ok, out = _verdict(capsys, checker, wrong)
    assert ok is False and out.startswith("❌ Not quite:")
    for unattempted in (stub, returns_none):
        ok, out = _verdict(capsys, checker, unattempted)
        assert ok is False and out.strip() == ex.NOT_ATTEMPTED


def test_plain_checkers_explain_common_mistakes(capsys):
    assert not ex.check_best_layer(best_single_task_layer)
    assert "single best task" in capsys.readouterr().out
    assert not ex.check_knn_accuracy(loo_keeps_self)
    assert "found itself" in capsys.readouterr().out
    assert not ex.check_follows(lambda t, a, b: 1 / 0)
    assert "raised ZeroDivisionError" in capsys.readouterr().out


def test_checkers_take_real_tables_too(capsys):
    per_layer = ex.example_per_layer().assign(dev_acc=lambda d: d.dev_acc[::-1].to_numpy())
    assert ex.check_best_layer(best_layer, per_layer)
    X, labels = ex.example_vectors(seed=5)
    assert ex.check_knn_accuracy(loo_1nn_accuracy, X, labels)
    assert ex.check_follows(follows, ex.example_conflict_table())
    capsys.readouterr()


def test_check_patch_theta(capsys, tiny_llama):
    ok, out = _verdict(capsys, ex.check_patch_theta, patch_theta, tiny_llama)
    assert ok and out.startswith("✅ Correct:")
    ok, out = _verdict(capsys, ex.check_patch_theta, unpatched, tiny_llama)
    assert not ok and "unpatched logits" in out
    ok, out = _verdict(capsys, ex.check_patch_theta, patched_everywhere, tiny_llama)
    assert not ok and out.startswith("❌ Not quite:")
    ok, out = _verdict(capsys, ex.check_patch_theta, stub, tiny_llama)
    assert not ok and out.strip() == ex.NOT_ATTEMPTED


def test_check_project_to_vocab(capsys, tiny_llama):
    ok, out = _verdict(capsys, ex.check_project_to_vocab, project_to_vocab, tiny_llama)
    assert ok and out.startswith("✅ Correct:")
    ok, out = _verdict(capsys, ex.check_project_to_vocab, no_norm, tiny_llama)
    assert not ok and "final norm" in out
    ok, out = _verdict(capsys, ex.check_project_to_vocab, raw_logits, tiny_llama)
    assert not ok and "log_softmax" in out
    ok, out = _verdict(capsys, ex.check_project_to_vocab, returns_none, tiny_llama)
    assert not ok and out.strip() == ex.NOT_ATTEMPTED
