"""Checkers for the notebooks' exercises.

Each checker runs your function (or value) next to the reference on a small input and prints one line:
"✅ Correct: ...", "❌ Not quite: <what differs>", or "⏳ Not attempted yet: ..." while the stub still raises
NotImplementedError or returns None. It returns True or False.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

NOT_ATTEMPTED = "⏳ Not attempted yet: fill in the exercise above (hint above, solution below)"


class _NotAttempted(Exception):
    pass


class _Raised(Exception):
    pass


def _call(fn, *args, **kwargs):
    """Run the student's function; a stub (NotImplementedError or None) and other errors are reported."""
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError:
        raise _NotAttempted from None
    except Exception as e:  # noqa: BLE001 - any error in student code becomes a message
        raise _Raised(f"your function raised {type(e).__name__}: {e}") from None
    if out is None:
        raise _NotAttempted
    return out


def _checker(check):
    """Turn check(...) -> (ok, message) into a printed ✅ / ❌ / ⏳ line and a bool."""

    @functools.wraps(check)
    def run(*args, **kwargs):
        try:
            ok, message = check(*args, **kwargs)
        except _NotAttempted:
            print(NOT_ATTEMPTED)
            return False
        except _Raised as e:
            ok, message = False, str(e)
        print(("✅ Correct: " if ok else "❌ Not quite: ") + message)
        return ok

    return run


# ---------------------------------------------------------------- 01: the prompt format


_PROMPT_CASES = (
    ([("dog", "chien"), ("house", "maison")], "cat"),
    ([("Apple", "Red"), ("Lime", "Green"), ("Sky", "Blue")], "Corn"),
    ([("q,w,e", "q")], "a,b,c"),
)


@_checker
def check_icl_prompt(build_prompt):
    """Compare build_prompt(demos, query) with the paper's format (`DEFAULT_FORMAT.icl`) on three episodes."""
    from .prompts import DEFAULT_FORMAT

    for demos, query in _PROMPT_CASES:
        expected = DEFAULT_FORMAT.icl(demos, query)
        got = _call(build_prompt, demos, query)
        if got != expected:
            if not isinstance(got, str):
                return False, f"expected a string, got {type(got).__name__}"
            exp_lines, got_lines = expected.split("\n"), got.split("\n")
            for i, (e, g) in enumerate(zip(exp_lines, got_lines)):
                if e != g:
                    return False, f"line {i + 1} for demos={demos}, query={query!r}: expected {e!r}, got {g!r}"
            return False, (f"for demos={demos}, query={query!r} expected {len(exp_lines)} lines, got "
                           f"{len(got_lines)} (lines are joined by a newline, with none at the end)")
    example = DEFAULT_FORMAT.icl(*_PROMPT_CASES[0])
    return True, f"your prompts match the paper's format on {len(_PROMPT_CASES)} episodes, e.g.\n{example}"


# ---------------------------------------------------------------- 02: patching theta


def _logits_like(out):
    import torch

    if not isinstance(out, torch.Tensor):
        raise _Raised(f"expected a torch.Tensor of logits, got {type(out).__name__}")
    return out.detach().float().cpu()


@_checker
def check_patch_theta(patch_theta, model, layers=None):
    """Compare patch_theta(model, seqs, theta, layer) with `interventions.patched_logits` on three prompts of
    different lengths (so padding matters) at two layers (so the layer argument matters)."""
    from . import interventions as iv
    from .prompts import DEFAULT_FORMAT as F

    seqs = model.encode([F.query("Corn"), F.icl([("Apple", "Red")], "Lime"), F.query("Sky")])
    donor = model.encode([F.icl([("Apple", "Red"), ("Lime", "Green"), ("Coal", "Black")], "Plum")])
    states = iv.capture(model, donor)[0]  # [n_layers, hidden]
    layers = layers or sorted({model.n_layers // 2, model.n_layers // 4})
    clean = iv.patched_logits(model, seqs, None, None)
    tol = 1e-3 if model.dtype.is_floating_point and model.dtype.itemsize == 4 else 5e-2
    for layer in layers:
        theta = states[layer]
        ref = iv.patched_logits(model, seqs, theta, layer)
        got = _logits_like(_call(patch_theta, model, seqs, theta.clone(), layer))
        if got.shape != ref.shape:
            extra = (" (keep only the last position: logits[:, -1])" if got.dim() == 3 else "")
            return False, f"expected logits of shape {tuple(ref.shape)}, got {tuple(got.shape)}{extra}"
        diff = (got - ref).abs().max().item()
        if diff <= tol * max(1.0, ref.abs().max().item()):
            continue
        if (got - clean).abs().max().item() <= tol * max(1.0, clean.abs().max().item()):
            return False, (f"at layer {layer} these are the model's unpatched logits: θ was not written "
                           f"(assign it to the layer's output at the last position, inside the trace)")
        agree = (got.argmax(-1) == ref.argmax(-1)).sum().item()
        return False, (f"at layer {layer} your logits differ from the reference by up to {diff:.3g}; the top "
                       f"token agrees on {agree}/{len(seqs)} prompts. Patch only the last position of layer "
                       f"`layer`'s output, and left-pad the batch (`pad_left`)")
    return True, f"your logits match `interventions.patched_logits` at layers {layers} on {len(seqs)} prompts"


# ---------------------------------------------------------------- 03: the best layer


def _best_layer_reference(per_layer: pd.DataFrame) -> int:
    return int(per_layer.groupby("layer")["dev_acc"].mean().idxmax())


def example_per_layer() -> pd.DataFrame:
    """A small per-layer table where the best single-task layer (1) is not the best mean layer (3)."""
    acc = {"task_a": [0.0, 1.0, 0.3, 0.8, 0.1],
           "task_b": [0.0, 0.0, 0.4, 0.7, 0.2],
           "task_c": [0.1, 0.0, 0.5, 0.6, 0.5]}
    rows = [{"model": "toy", "task": t, "category": "toy", "layer": layer, "rel_depth": layer / 5, "dev_acc": a}
            for t, accs in acc.items() for layer, a in enumerate(accs)]
    return pd.DataFrame(rows)


@_checker
def check_best_layer(best_layer, per_layer: pd.DataFrame | None = None):
    """Compare best_layer(per_layer) (layer with the highest accuracy averaged over tasks) with the reference,
    on a toy table and, if given, on a real per-layer table."""
    tables = [("the toy table", example_per_layer())]
    if per_layer is not None:
        tables.append(("your per-layer table", per_layer))
    for name, table in tables:
        expected = _best_layer_reference(table)
        got = _call(best_layer, table.copy())
        try:
            got_int = int(got)
        except (TypeError, ValueError):
            return False, f"expected a layer number (int), got {got!r}"
        if got_int != expected:
            mean = table.groupby("layer")["dev_acc"].mean()
            why = ""
            if got_int not in mean.index:
                why = f" ({got_int} is not a layer in the table: a row index instead of the layer?)"
            elif got_int == int(table.loc[table.dev_acc.idxmax(), "layer"]):
                why = " (that layer holds the single best task, not the best mean over tasks)"
            return False, (f"on {name} the best layer is {expected} (mean accuracy {mean[expected]:.2f}), you "
                           f"returned {got_int}{why}")
    return True, f"best layer {expected} (mean accuracy over tasks {table.groupby('layer').dev_acc.mean().max():.2f})"


# ---------------------------------------------------------------- 04: leave-one-out 1-NN


def _loo_1nn_reference(X, labels) -> float:
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    dist = 1 - unit @ unit.T
    np.fill_diagonal(dist, np.inf)
    return float(np.mean(labels[dist.argmin(1)] == labels))


def _loo_1nn_euclidean(X, labels) -> float:
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    dist = np.linalg.norm(X[:, None] - X[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    return float(np.mean(labels[dist.argmin(1)] == labels))


def example_vectors(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Toy 'task vectors': 3 tasks as noisy directions with very different norms, where cosine and Euclidean
    1-NN disagree and keeping each point as its own neighbour would score 1.0."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8))
    X, labels = [], []
    for t, centre in enumerate(centres):
        for _ in range(10):
            direction = centre + 0.9 * rng.normal(size=8)
            X.append(direction * np.exp(rng.uniform(-2, 2)))
            labels.append(f"task_{t}")
    return np.array(X), np.array(labels)


@_checker
def check_knn_accuracy(loo_1nn_accuracy, X=None, labels=None):
    """Compare loo_1nn_accuracy(X, labels) (leave-one-out 1-NN task identification with cosine distance) with
    the reference, on toy vectors and, if given, on real task vectors."""
    cases = [("toy vectors", *example_vectors())]
    if X is not None:
        cases.append(("your vectors", np.asarray(X), np.asarray(labels)))
    for name, x, y in cases:
        expected = _loo_1nn_reference(x, y)
        got = _call(loo_1nn_accuracy, x.copy(), y.copy())
        try:
            got = float(got)
        except (TypeError, ValueError):
            return False, f"expected a float accuracy in [0, 1], got {got!r}"
        if abs(got - expected) > 1e-6:
            why = ""
            if got == 1.0:
                why = " (1.0: each vector found itself; exclude it, e.g. set the diagonal to +inf)"
            elif abs(got - _loo_1nn_euclidean(x, y)) < 1e-6:
                why = " (that is the Euclidean answer: use cosine distance, 1 - cosine similarity)"
            return False, f"on {name} the accuracy is {expected:.3f}, you returned {got:.3f}{why}"
    return True, f"leave-one-out 1-NN accuracy {expected:.3f} on {name} ({len(y)} vectors)"


# ---------------------------------------------------------------- 05: which task does the model follow?


def _follows_reference(table: pd.DataFrame, task_a: str, task_b: str) -> str:
    row = table[(table.task_a == task_a) & (table.task_b == task_b) & (table.method == "ICL + theta of B")].iloc[0]
    return task_b if row.acc_b > row.acc_a else task_a


def example_conflict_table() -> pd.DataFrame:
    """A toy conflict table: two pairs, where reading the wrong row ('ICL (demos of A)') gives the wrong answer."""
    rows = [("next_letter", "to_upper", "ICL (demos of A)", 0.9, 0.1),
            ("next_letter", "to_upper", "ICL + theta of B", 0.2, 0.7),
            ("en_es", "en_fr", "ICL + theta of B", 0.6, 0.3),
            ("en_es", "en_fr", "ICL (demos of A)", 0.2, 0.5)]
    return pd.DataFrame([{"model": "toy", "task_a": a, "task_b": b, "method": m, "layer": 9, "acc_a": x,
                          "acc_b": y} for a, b, m, x, y in rows])


@_checker
def check_follows(follows, table: pd.DataFrame | None = None):
    """Compare follows(table, task_a, task_b) (the task whose answers the model gives when theta(B) is patched
    over demonstrations of A) with the reference, on a toy table and, if given, a real one (ties skipped)."""
    cases = [("the toy table", example_conflict_table())]
    if table is not None:
        cases.append(("your table", table))
    n = 0
    for name, t in cases:
        conflict = t[t.method == "ICL + theta of B"]
        for row in conflict.itertuples():
            if row.acc_a == row.acc_b:
                continue
            expected = _follows_reference(t, row.task_a, row.task_b)
            got = _call(follows, t.copy(), row.task_a, row.task_b)
            if got != expected:
                return False, (f"on {name}, demos of {row.task_a} with θ({row.task_b}): the model follows "
                               f"{expected} (accuracy on A {row.acc_a:.2f}, on B {row.acc_b:.2f} in the "
                               f"'ICL + theta of B' row), you returned {got!r}")
            n += 1
    return True, f"you named the followed task for all {n} conflicting pairs"


# ---------------------------------------------------------------- 06: vocabulary projection


@_checker
def check_project_to_vocab(project_to_vocab, model):
    """Compare project_to_vocab(model, vectors) (final norm, unembedding, log_softmax) with `analysis.project`
    on hidden states of two prompts at two layers."""
    import torch

    from . import interventions as iv
    from .analysis import project
    from .prompts import DEFAULT_FORMAT as F

    states = iv.capture(model, model.encode([F.icl([("Apple", "Red"), ("Lime", "Green")], "Plum"),
                                             F.icl([("dog", "chien")], "cat")]))
    vectors = states[:, [model.n_layers // 2, model.n_layers - 1]].reshape(-1, states.shape[-1]).float()
    ref = project(model, vectors)
    got = _logits_like(_call(project_to_vocab, model, vectors.clone()))
    if got.shape != ref.shape:
        return False, f"expected log-probabilities of shape {tuple(ref.shape)}, got {tuple(got.shape)}"
    tol = 1e-3 if model.dtype.itemsize == 4 else 5e-2
    diff = (got - ref).abs().max().item()
    if diff <= tol * max(1.0, ref.abs().max().item()):
        return True, f"your log-probabilities match `analysis.project` on {len(vectors)} vectors"
    lse = torch.logsumexp(got, dim=-1).abs().max().item()
    if lse > 1e-2:
        return False, (f"these are not log-probabilities (logsumexp over the vocabulary should be 0, yours is up "
                       f"to {lse:.3g}): finish with log_softmax over the last dimension")
    with torch.no_grad():
        no_norm = torch.log_softmax(model.unembed(vectors.to(model.device, model.dtype)).float(), -1).cpu()
    if (got - no_norm).abs().max().item() <= tol * max(1.0, no_norm.abs().max().item()):
        return False, "you skipped the final norm: apply model.final_norm before the unembedding"
    agree = (got.argmax(-1) == ref.argmax(-1)).sum().item()
    return False, (f"your log-probabilities differ from the reference by up to {diff:.3g}; the top token agrees on "
                   f"{agree}/{len(vectors)} vectors (final norm, then unembedding, then log_softmax)")
