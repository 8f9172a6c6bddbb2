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
    except NameError as e:  # UnboundLocalError too: a value of the trace read after it without .save()
        raise _Raised(f"your function raised {type(e).__name__}: {e}{_save_hint(fn)}") from None
    except Exception as e:  # noqa: BLE001 - any error in student code becomes a message
        raise _Raised(f"your function raised {type(e).__name__}: {e}") from None
    if out is None:
        raise _NotAttempted
    return out


def _save_hint(fn) -> str:
    """Why a name can be missing after an nnsight trace: values made inside it survive only if saved."""
    import inspect

    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = ""
    if "trace(" not in source:
        return ""
    return (". Did you forget .save()? Inside `with model.nn.trace(...)` a value is a proxy, and after the block "
            "only the values you called .save() on exist")


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


# ---------------------------------------------------------------- 02: reading, averaging and patching theta


def _tensor(out, what: str = "logits"):
    import torch

    if not isinstance(out, torch.Tensor):
        raise _Raised(f"expected a torch.Tensor of {what}, got {type(out).__name__}")
    return out.detach().float().cpu()


def _tolerance(model) -> float:
    return 1e-3 if model.dtype.itemsize == 4 else 5e-2


def _close(got, ref, model) -> bool:
    return (got - ref).abs().max().item() <= _tolerance(model) * max(1.0, ref.abs().max().item())


_COLOURS = [("Apple", "Red"), ("Lime", "Green"), ("Coal", "Black")]


@_checker
def check_read_theta(read_theta, model):
    """Compare read_theta(model, seqs, layer) (the state after decoder layer `layer` at each prompt's last
    token) with `interventions.capture` on prompts of different lengths, at two layers."""
    from . import interventions as iv
    from .prompts import DEFAULT_FORMAT as F

    seqs = model.encode([F.icl(_COLOURS, "Plum"), F.icl(_COLOURS[:1], "Corn"), F.query("Sky")])
    states = iv.capture(model, seqs)  # [prompts, layers, hidden]
    layers = sorted({model.n_layers // 2, model.n_layers // 4})
    padded = max(len(s) for s in seqs)  # pad_left's length: out[0] on [batch, seq, hidden] keeps [seq, hidden]
    for layer in layers:
        ref = states[:, layer].float().cpu()
        got = _tensor(_call(read_theta, model, seqs, layer), "hidden states")
        if got.shape != ref.shape and len(seqs) != padded and got.dim() in (1, 2) and got.shape[0] == padded:
            return False, (f"your states have shape {tuple(got.shape)}, with the padded prompt length ({padded}) "
                           f"first: out[0] took batch row 0. On this model a layer's output is a tensor "
                           f"[batch, seq, hidden]; only some models (GPT-J) return a tuple, so write "
                           f"`out[0] if isinstance(out, tuple) else out`")
        if got.shape != ref.shape:
            extra = " (keep only the last position: hidden[:, -1])" if got.dim() == 3 else ""
            return False, f"expected states of shape {tuple(ref.shape)} (prompts, hidden), got {tuple(got.shape)}{extra}"
        if _close(got, ref, model):
            continue
        for other in range(model.n_layers):
            if _close(got, states[:, other].float().cpu(), model):
                return False, (f"asked for layer {layer}, you returned the output of layer {other} "
                               f"(model.nn_layers()[layer].output is the state after layer `layer`)")
        if _close(got[:1].expand_as(ref), ref, model) or _close(got, ref[:1].expand_as(got), model):
            return False, "every row holds the first prompt's state: out[0] on a tensor takes batch row 0"
        return False, (f"at layer {layer} your states differ from `capture` by up to {(got - ref).abs().max():.3g}: "
                       f"left-pad the batch (`pad_left`) and take position -1 of the layer's output")
    return True, f"your θ matches `interventions.capture` at layers {layers} on {len(seqs)} prompts"


@_checker
def check_mean_theta(mean_theta, model):
    """Compare mean_theta(model, demos, dummies, layer) (θ averaged over one prompt per dummy query) with
    `interventions.task_vectors`."""
    from . import interventions as iv
    from .prompts import DEFAULT_FORMAT as F

    dummies = ["Plum", "Sky", "Snow"]
    seqs = model.encode([F.icl(_COLOURS, d) for d in dummies])
    layer = model.n_layers // 2
    ref = iv.task_vectors(model, seqs, n_dummies=len(dummies))[0, layer].float().cpu()
    got = _tensor(_call(mean_theta, model, _COLOURS, dummies, layer), "hidden states")
    if got.shape != ref.shape:
        return False, f"expected one vector of shape {tuple(ref.shape)}, got {tuple(got.shape)}"
    if _close(got, ref, model):
        return True, f"your θ is the mean over the {len(dummies)} dummy prompts, as `interventions.task_vectors`"
    states = iv.capture(model, seqs)[:, layer].float().cpu()
    if any(_close(got, state, model) for state in states):
        return False, "that is θ of a single dummy prompt: average over one prompt per dummy query"
    return False, (f"your θ differs from the mean over dummy prompts by up to {(got - ref).abs().max():.3g}: one "
                   f"prompt per dummy, `DEFAULT_FORMAT.icl(demos, dummy)`, states at `layer`, mean over prompts")


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
    for layer in layers:
        theta = states[layer]
        ref = iv.patched_logits(model, seqs, theta, layer)
        got = _tensor(_call(patch_theta, model, seqs, theta.clone(), layer))
        if got.shape != ref.shape:
            extra = (" (keep only the last position: logits[:, -1])" if got.dim() == 3 else "")
            return False, f"expected logits of shape {tuple(ref.shape)}, got {tuple(got.shape)}{extra}"
        if _close(got, ref, model):
            continue
        if _close(got, clean, model):
            return False, (f"at layer {layer} these are the model's unpatched logits: θ was not written "
                           f"(assign it to the layer's output at the last position, inside the trace)")
        agree = (got.argmax(-1) == ref.argmax(-1)).sum().item()
        return False, (f"at layer {layer} your logits differ from the reference by up to {(got - ref).abs().max():.3g}; the top "
                       f"token agrees on {agree}/{len(seqs)} prompts. Patch only the last position of layer "
                       f"`layer`'s output, and left-pad the batch (`pad_left`)")
    return True, f"your logits match `interventions.patched_logits` at layers {layers} on {len(seqs)} prompts"


# ---------------------------------------------------------------- 03: the layer sweep and the best layer


@_checker
def check_choose_layer(choose_layer, model, n: int = 8):
    """Compare choose_layer(model, dev, test) -> (layer, test accuracy) with the reference: the first layer
    with the best accuracy on the dev split, and the accuracy of θ patched at that layer on the test split.
    On antonyms (next_letter where the tokenizer cannot score antonyms): there, on Gemma 3 270M, the best
    test layer is not the best dev layer, so choosing on test is caught."""
    from . import engine
    from .experiments import quick_tasks
    from .experiments import prepare_split
    from .protocol import Protocol, accuracy, best_of

    task = "antonyms" if "antonyms" in quick_tasks(model, 10, need=3 * n) else "next_letter"

    protocol = Protocol(n_dev=n, n_test=n)
    dev = prepare_split(model, task, "dev", n, protocol, icl=False)
    test = prepare_split(model, task, "test", n, protocol, icl=False)
    layers = list(range(model.n_layers))
    dev_acc = accuracy(model, engine.layer_sweep(model, dev.queries, dev.theta), dev.target[:, None], dim=0)
    test_acc = accuracy(model, engine.layer_sweep(model, test.queries, test.theta), test.target[:, None], dim=0)
    best = best_of(layers, dev_acc)
    got = _call(choose_layer, model, dev, test)
    try:
        layer, acc = int(got[0]), float(got[1])
    except (TypeError, ValueError, IndexError):
        return False, f"expected a pair (layer, test accuracy), got {got!r}"
    if layer != best:
        why = ""
        if layer == best_of(layers, test_acc) and test_acc[layer] > test_acc[best]:
            why = " (that is the best layer on test: choose on dev, then only report test)"
        elif dev_acc[layer] == dev_acc[best]:
            why = " (a tie: take the first layer with the best dev accuracy)"
        return False, f"the best dev layer is {best} (dev accuracy {dev_acc[best]:.2f}), you chose {layer}{why}"
    if abs(acc - test_acc[best]) > 1e-6:
        why = " (that is the dev accuracy: report the test split)" if abs(acc - dev_acc[best]) < 1e-6 else ""
        return False, f"at layer {best} the test accuracy is {test_acc[best]:.2f}, you reported {acc:.2f}{why}"
    return True, (f"{task} on the checker's own {n} dev + {n} test episodes (fewer than the notebook's, for "
                  f"speed, so its accuracies differ): layer {best} chosen on dev ({dev_acc[best]:.2f}), "
                  f"test accuracy {test_acc[best]:.2f}")


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
    from .protocol import best_mean_layer

    tables = [("the toy table", example_per_layer())]
    if per_layer is not None:
        tables.append(("your per-layer table", per_layer))
    for name, table in tables:
        expected = best_mean_layer(table)
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


def _score_cases(student, reference, toy, X, labels, what: str, tol: float, mistake):
    """Run a student's score(X, labels) against the reference on toy vectors and, if given, real ones:
    (ok, message); `mistake(x, y, got)` names a typical error or returns ""."""
    cases = [("toy vectors", *toy)]
    if X is not None:
        cases.append(("your vectors", np.asarray(X), np.asarray(labels)))
    for name, x, y in cases:
        expected = reference(x, y)
        got = _call(student, x.copy(), y.copy())
        try:
            got = float(got)
        except (TypeError, ValueError):
            return False, f"expected a float {what}, got {got!r}"
        if abs(got - expected) > tol:
            return False, f"on {name} the {what} is {expected:.3f}, you returned {got:.3f}{mistake(x, y, got)}"
    return True, f"{what} {expected:.3f} on {name} ({len(y)} vectors)"


@_checker
def check_knn_accuracy(loo_1nn_accuracy, X=None, labels=None):
    """Compare loo_1nn_accuracy(X, labels) (leave-one-out 1-NN task identification with cosine distance) with
    the reference, on toy vectors and, if given, on real task vectors."""
    from .analyses.geometry import knn_accuracy

    def mistake(x, y, got):
        if got == 1.0:
            return " (1.0: each vector found itself; exclude it, e.g. set the diagonal to +inf)"
        if abs(got - _loo_1nn_euclidean(x, y)) < 1e-6:
            return " (that is the Euclidean answer: use cosine distance, 1 - cosine similarity)"
        return ""

    return _score_cases(loo_1nn_accuracy, lambda x, y: knn_accuracy(x, y, k=1), example_vectors(), X, labels,
                        "leave-one-out 1-NN accuracy", 1e-6, mistake)


@_checker
def check_silhouette(silhouette, X=None, labels=None):
    """Compare silhouette(X, labels) (mean silhouette with cosine distance) with scikit-learn's, on toy
    vectors and, if given, real task vectors."""
    from sklearn.metrics import silhouette_score

    def mistake(x, y, got):
        if abs(got - silhouette_score(x, y, metric="euclidean")) < 1e-4:
            return " (that is the Euclidean silhouette: use cosine distance, 1 - cosine similarity)"
        return ("; a(i) is the mean distance to the other members of i's task, b(i) the smallest mean distance "
                "to another task")

    return _score_cases(silhouette, lambda x, y: float(silhouette_score(x.astype(np.float64), y, metric="cosine")),
                        example_vectors(seed=1), X, labels, "silhouette", 1e-4, mistake)


# ---------------------------------------------------------------- 05: which task does the model follow?


@_checker
def check_conflict_logits(conflict_logits, model):
    """Compare conflict_logits(model, demos_a, query, theta_b, layer) (the ICL prompt of A's demonstrations
    and the query, with θ(B) written over its last token at `layer`) with `interventions.patched_logits`."""
    from . import interventions as iv
    from .prompts import DEFAULT_FORMAT as F

    demos_a, query = [("a", "b"), ("m", "n"), ("x", "y")], "c"
    layer = model.n_layers // 2
    theta_b = iv.capture(model, model.encode([F.icl([("a", "A"), ("m", "M"), ("x", "X")], "k")]))[0, layer]
    ref = iv.patched_logits(model, model.encode([F.icl(demos_a, query)]), theta_b, layer)[0].float().cpu()
    got = _tensor(_call(conflict_logits, model, demos_a, query, theta_b.clone(), layer))
    got = got[0] if got.dim() == 2 and len(got) == 1 else got
    if got.shape != ref.shape:
        return False, f"expected one row of logits of shape {tuple(ref.shape)}, got {tuple(got.shape)}"
    if _close(got, ref, model):
        return True, "your logits match θ(B) patched over the demonstrations of A"
    alone = iv.patched_logits(model, model.encode([F.query(query)]), theta_b, layer)[0].float().cpu()
    if _close(got, alone, model):
        return False, "you patched the query alone: the conflict needs A's demonstrations in the prompt"
    plain = iv.patched_logits(model, model.encode([F.icl(demos_a, query)]), None, None)[0].float().cpu()
    if _close(got, plain, model):
        return False, "these are plain ICL logits: θ(B) was not written at `layer`"
    return False, f"your logits differ from the reference by up to {(got - ref).abs().max():.3g}"


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
    from .analyses.conflict import followed_task

    cases = [("the toy table", example_conflict_table())]
    if table is not None:
        cases.append(("your table", table))
    n = 0
    for name, t in cases:
        conflict = t[t.method == "ICL + theta of B"]
        for row in conflict.itertuples():
            if row.acc_a == row.acc_b:
                continue
            expected = followed_task(t, row.task_a, row.task_b)
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
    """Compare project_to_vocab(model, vectors) (final norm, unembedding, log_softmax) with `vocab.project`
    on hidden states of two prompts at two layers."""
    import torch

    from . import interventions as iv
    from .analyses.vocab import project
    from .prompts import DEFAULT_FORMAT as F

    states = iv.capture(model, model.encode([F.icl([("Apple", "Red"), ("Lime", "Green")], "Plum"),
                                             F.icl([("dog", "chien")], "cat")]))
    vectors = states[:, [model.n_layers // 2, model.n_layers - 1]].reshape(-1, states.shape[-1]).float()
    ref = project(model, vectors)
    got = _tensor(_call(project_to_vocab, model, vectors.clone()), "log-probabilities")
    if got.shape != ref.shape:
        return False, f"expected log-probabilities of shape {tuple(ref.shape)}, got {tuple(got.shape)}"
    if _close(got, ref, model):
        return True, f"your log-probabilities match `vocab.project` on {len(vectors)} vectors"
    lse = torch.logsumexp(got, dim=-1).abs().max().item()
    if lse > 1e-2:
        return False, (f"these are not log-probabilities (logsumexp over the vocabulary should be 0, yours is up "
                       f"to {lse:.3g}): finish with log_softmax over the last dimension")
    with torch.no_grad():
        no_norm = torch.log_softmax(model.unembed(vectors.to(model.device, model.dtype)).float(), -1).cpu()
    if _close(got, no_norm, model):
        return False, "you skipped the final norm: apply model.final_norm before the unembedding"
    agree = (got.argmax(-1) == ref.argmax(-1)).sum().item()
    return False, (f"your log-probabilities differ from the reference by up to {(got - ref).abs().max():.3g}; the top token agrees on "
                   f"{agree}/{len(vectors)} vectors (final norm, then unembedding, then log_softmax)")


@_checker
def check_answer_rank(answer_rank):
    """Compare answer_rank(logp, answer_ids) (each row's answer token rank, 0 = top) with `vocab.answer_rank`
    on toy log-probabilities with a tie."""
    import torch

    from .analyses.vocab import answer_rank as reference

    logp = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.5, 3.0], [0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 0.0, 2.0]]), -1)
    answers = torch.tensor([0, 3, 1])
    ref = reference(logp, answers)
    got = _tensor(_call(answer_rank, logp.clone(), answers.clone()), "ranks").long().flatten()
    if got.shape != ref.shape:
        return False, f"expected one rank per row, shape {tuple(ref.shape)}, got {tuple(got.shape)}"
    if torch.equal(got, ref):
        return True, f"ranks {ref.tolist()} (0 = the top token; a tie counts in the answer's favour)"
    if torch.equal(got, ref + 1):
        return False, "your ranks start at 1: count the tokens strictly more likely than the answer (0 = top)"
    return False, f"expected ranks {ref.tolist()}, got {got.tolist()}"


# ---------------------------------------------------------------- 07: your own task


@_checker
def check_own_task(answer_with_theta, model, layer=None):
    """Compare answer_with_theta(model, pairs, queries, layer) (θ from the pairs: the last two inputs as dummy
    queries, the rest as demonstrations; then each `query ->` patched with θ) with `icl.own_task_answers`."""
    from .analyses.icl import own_task_answers

    # next-letter demonstrations, then two upper-case pairs whose inputs are the dummies: using those pairs
    # as demonstrations mixes in another task and changes the answers
    pairs = [("a", "b"), ("c", "d"), ("m", "n"), ("p", "q"), ("dog", "DOG"), ("cat", "CAT")]
    queries = ["h", "k", "s"]
    layer = model.n_layers // 2 if layer is None else layer
    table, info = own_task_answers(model, pairs, queries, layer)
    ref = table[f"task vector (layer {layer})"].tolist()
    got = _call(answer_with_theta, model, pairs, queries, layer)
    got = [got] if isinstance(got, str) else list(got)
    if [str(a).strip() for a in got] == [a.strip() for a in ref]:
        return True, f"your answers {ref} match `icl.own_task_answers` (dummies {', '.join(info['dummies'])})"
    return False, (f"expected {ref}, got {got}: demonstrations = all pairs but the last two, dummy queries = "
                   f"the last two inputs, θ = mean over the two dummy prompts at `layer`, then patch each query")


# ---------------------------------------------------------------- 08: function vectors


@_checker
def check_head_contribution(head_contribution, model):
    """Compare head_contribution(model, states, layer, head) (one head's share of the output projection, from
    the heads' pre-projection states [N, n_heads, head_dim]) with `function_vectors.head_outputs`."""

    from .analyses import function_vectors as fv
    from .prompts import DEFAULT_FORMAT as F

    states = fv.head_states(model, model.encode([F.icl(_COLOURS, "Plum"), F.query("Sky")]))
    for layer in sorted({model.n_layers // 2, model.n_layers - 1}):
        ref_all = fv.head_outputs(model, states[:, layer], layer).float().cpu()  # [N, heads, hidden]
        for head in (0, fv.n_heads(model) - 1):
            got = _tensor(_call(head_contribution, model, states[:, layer].clone(), layer, head), "head outputs")
            ref = ref_all[:, head]
            if got.shape != ref.shape:
                return False, f"expected one vector per prompt, shape {tuple(ref.shape)}, got {tuple(got.shape)}"
            if _close(got, ref, model):
                continue
            if any(_close(got, ref_all[:, other], model) for other in range(ref_all.shape[1])):
                return False, f"that is another head's share: head {head} reads columns head*d:(head+1)*d of W"
            if _close(got, ref_all.sum(1), model):
                return False, "that is the sum over all heads: keep only this head's slice of the state and of W"
            return False, (f"layer {layer}, head {head}: off by up to {(got - ref).abs().max():.3g}; the projection's "
                           f"weight is [hidden, n_heads*head_dim]: state_h @ W[:, h*d:(h+1)*d].T")
    return True, "your head outputs match `function_vectors.head_outputs` for the first and last head at two layers"


@_checker
def check_indirect_effect(indirect_effect, model):
    """Compare indirect_effect(model, seqs, answers, layer, head, state) (mean rise of p(answer) when one
    head's state at the last token is set to `state`) with `function_vectors.head_patched_probs`."""
    import torch

    from .analyses import function_vectors as fv
    from .prompts import DEFAULT_FORMAT as F

    seqs = model.encode([F.icl([("Apple", "Green"), ("Lime", "Red")], "Coal"), F.icl(_COLOURS[:1], "Sky"),
                         F.query("Plum")])
    answers = torch.tensor([ids[-1] for ids in model.encode([" Black", " Blue", " Purple"])])
    dim = fv.head_blocks(model, 0).shape[-1]
    state = torch.randn(dim, generator=torch.Generator().manual_seed(0)) * 20  # large, so the effect is large
    clean = fv.head_patched_probs(model, seqs, answers, 0, 0, None)
    for layer, head in ((model.n_layers // 2, 0), (model.n_layers - 1, fv.n_heads(model) - 1)):
        patched = fv.head_patched_probs(model, seqs, answers, layer, head, state)
        ref = (patched - clean).mean().item()
        got = _call(indirect_effect, model, seqs, answers.clone(), layer, head, state.clone())
        got = float(got.item() if isinstance(got, torch.Tensor) else got)
        if abs(got - ref) <= 1e-4 * max(abs(ref), 1e-3):
            continue
        if abs(got + ref) <= 1e-4 * max(abs(ref), 1e-3):
            return False, "the sign is flipped: the effect is p(patched) minus p(clean)"
        if abs(got - patched.mean().item()) <= 1e-4 * max(abs(ref), 1e-3):
            return False, "that is p(answer) with the patch; subtract p(answer) of the unpatched run"
        return False, (f"layer {layer}, head {head}: expected {ref:.5f}, got {got:.5f}; write the state into "
                       f"proj.input[:, -1, head*d:(head+1)*d] (the last token only) and compare with a clean run")
    return True, "your indirect effects match `function_vectors.head_patched_probs` at two heads"


def example_effects(seed: int = 0):
    """A toy indirect-effect table (3 tasks, 4 layers x 3 heads) and per-head contributions [4, 3, 8]."""
    import torch

    rng = np.random.default_rng(seed)
    cells = [(t, l, h) for t in ("a", "b", "c") for l in range(4) for h in range(3)]
    effects = pd.DataFrame(cells, columns=["task", "layer", "head"]).assign(effect=rng.normal(size=len(cells)))
    effects.loc[(effects.task == "a") & (effects.layer == 0) & (effects["head"] == 0), "effect"] = 9.0  # one task only
    return effects, torch.tensor(rng.normal(size=(4, 3, 8)), dtype=torch.float32)


@_checker
def check_function_vector(build_function_vector, effects=None, contributions=None):
    """Compare build_function_vector(contributions, effects, k) (the sum of the contributions of the k heads
    with the largest mean effect over tasks) with `function_vectors.top_heads` on a toy table."""
    import torch

    from .analyses.function_vectors import top_heads

    toy_effects, toy_contributions = example_effects()
    effects = toy_effects if effects is None else effects
    contributions = toy_contributions if contributions is None else contributions
    for k in (1, 3):
        heads = top_heads(effects, k)
        ref = sum(contributions[layer, head] for layer, head in heads)
        got = _tensor(_call(build_function_vector, contributions.clone(), effects.copy(), k), "a vector")
        if got.shape != ref.shape:
            return False, f"expected one vector of shape {tuple(ref.shape)}, got {tuple(got.shape)}"
        if torch.allclose(got, ref, atol=1e-5):
            continue
        one_task = effects[effects.task == effects.task.iloc[0]].nlargest(k, "effect")
        if torch.allclose(got, sum(contributions[r.layer, r.head] for r in one_task.itertuples()), atol=1e-5):
            return False, "rank the heads by their mean effect over all tasks, not by one task's effects"
        return False, f"k={k}: expected the sum over heads {heads} (the largest mean effects), got another vector"
    return True, "your function vector sums the top heads by mean indirect effect, for k = 1 and 3"
