"""Checkers for the notebooks' exercises, and the functions you wrote, kept for later cells.

Each checker runs your function (or value) next to the reference on a small input and prints one line:
"✅ Correct: ...", "❌ Not quite: <what differs>", or "⏳ Not attempted yet: ..." while the stub still raises
NotImplementedError or returns None. It returns True or False. A function of the method that passes its check
is kept (`yours`), so later cells and notebooks can run your pipeline instead of the kit's (`course.functions`).
"""

from __future__ import annotations

import functools
import inspect
import os
import textwrap
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

__all__ = ["add_function_vector", "answer_rank", "build_function_vector", "check_add_function_vector",
           "check_answer_rank", "check_best_layer", "check_choose_layer", "check_conflict_accuracy",
           "check_conflict_logits", "check_cosine_distances", "check_follows", "check_function_vector",
           "check_head_contribution", "check_icl_prompt", "check_indirect_effect", "check_knn_accuracy",
           "check_make_episodes", "check_mean_theta", "check_own_theta", "check_patch_theta",
           "check_project_to_vocab", "check_rank_by_layer", "check_read_theta", "check_read_theta_layers",
           "check_silhouette", "check_sweep_own_task", "choose_layer", "conflict_accuracy", "conflict_episodes",
           "conflict_logits", "cosine_distances", "example_conflict_table", "example_per_layer", "example_vectors",
           "follows", "head_contribution", "indirect_effect", "kept", "kept_dir", "KIT", "loo_1nn_accuracy",
           "make_episodes", "mean_theta", "median_rank_by_layer", "NOT_ATTEMPTED", "own_theta", "patch_theta",
           "project_to_vocab", "read_theta", "silhouette", "sweep_own_task", "tv_accuracy", "yours"]

NOT_ATTEMPTED = "⏳ Not attempted yet: fill in the exercise above (hint above, solution below)"


class _NotAttempted(Exception):
    pass


class _Raised(Exception):
    pass


def _call(fn, *args, **kwargs):
    """Run the student's function; a stub (NotImplementedError or None) and other errors are reported."""
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError as e:
        stub = _innermost(e.__traceback__)
        if stub != getattr(fn, "__name__", stub):  # a function it calls is still a stub
            raise _Raised(f"your {fn.__name__} calls {stub}, which is still a stub: solve that exercise first, or "
                          f"call the kit's version from `course.functions(\"{stub}\")`") from None
        raise _NotAttempted from None
    except NameError as e:  # UnboundLocalError too: a value of the trace read after it without .save()
        raise _Raised(f"your function raised {type(e).__name__}: {e}{_save_hint(fn)}") from None
    except Exception as e:  # noqa: BLE001 - any error in student code becomes a message
        raise _Raised(f"your function raised {type(e).__name__}: {e}") from None
    if out is None:
        raise _NotAttempted
    return out


def _innermost(tb) -> str:
    """The name of the function in which an exception was raised."""
    while tb.tb_next:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name


def _save_hint(fn) -> str:
    """Why a name can be missing after an nnsight trace: values made inside it survive only if saved."""
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
        name = getattr(args[0], "__name__", None) if args else None
        if ok and name in KIT and args[0] is not KIT[name]:  # yours, not the kit's own version
            _keep(args[0])
        return ok

    return run


# ---------------------------------------------------------------- your functions, kept once their checks pass

KIT: dict = {}  # the kit's version of each step you write, by name (`@_kit` below each notebook's checkers)
_PASSED: dict = {}  # this kernel's functions whose checks passed, by name


def _kit(fn):
    """Register the kit's version of an exercise's function: later cells run it until yours passes its check."""
    KIT[fn.__name__] = fn
    return fn


def kept_dir() -> Path:
    """Where the source of a function that passed its check is kept for later notebooks: $TV_UTILS_MINE, else
    `mine/` in the kit's user cache (the tests point it at a temporary folder)."""
    if os.environ.get("TV_UTILS_MINE"):
        return Path(os.environ["TV_UTILS_MINE"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tv_utils")) / "mine"


def _keep(fn) -> None:
    """Keep a function that passed its check: the object for this kernel, its source for later notebooks."""
    from .store import write_atomic

    _PASSED[fn.__name__] = fn
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):  # defined where its source cannot be read: this kernel only
        return
    write_atomic(kept_dir() / f"{fn.__name__}.py", source)


def _workbench() -> dict:
    """The names a notebook's exercises use, for running a kept function outside its notebook."""
    import random
    from operator import attrgetter

    import torch

    from . import engine
    from .analyses import function_vectors
    from .batches import pad_left
    from .interventions import capture, patched_logits, task_vectors
    from .prompts import DEFAULT_FORMAT, answer_token_ids
    from .protocol import accuracy, best_of
    from .tasks import Episode

    return {"torch": torch, "np": np, "pd": pd, "engine": engine, "capture": capture, "pad_left": pad_left,
            "patched_logits": patched_logits, "task_vectors": task_vectors, "DEFAULT_FORMAT": DEFAULT_FORMAT,
            "answer_token_ids": answer_token_ids, "accuracy": accuracy, "best_of": best_of,
            "fv": function_vectors, "attrgetter": attrgetter,  # notebook 08's names
            "random": random, "Episode": Episode}  # notebook 07's


def yours(name: str):
    """Your `name`: this kernel's once its check passed, else the one an earlier notebook kept; None if neither."""
    return _PASSED.get(name) or kept(name)


def kept(name: str):
    """Your `name` as an earlier notebook kept it (None if none), run beside the others you kept, the kit's
    versions of the rest, and `fns` (a notebook's `course.functions`) holding all of them."""
    folder = kept_dir()
    if not (folder / f"{name}.py").is_file():
        return None
    namespace = {"__name__": "tv_utils.yours"} | _workbench() | KIT | _PASSED  # __name__: for dataclasses etc.
    for path in sorted(folder.glob("*.py")):
        if path.stem in KIT and path.stem not in _PASSED:
            try:
                exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # noqa: S102 - your code
            except Exception as e:  # noqa: BLE001 - a broken kept file falls back to the kit
                print(f"⚠️ could not load your {path.stem} from {path} ({type(e).__name__}: {e}); using the kit's")
                namespace[path.stem] = KIT[path.stem]
    namespace["fns"] = SimpleNamespace(**{n: namespace[n] for n in KIT})  # what the notebooks call `fns`
    return namespace[name]


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
            return False, (f"expected states of shape {tuple(ref.shape)} (prompts, hidden), got "
                           f"{tuple(got.shape)}{extra}")
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
        return False, (f"at layer {layer} your logits differ from the reference by up to "
                       f"{(got - ref).abs().max():.3g}; the top "
                       f"token agrees on {agree}/{len(seqs)} prompts. Patch only the last position of layer "
                       f"`layer`'s output, and left-pad the batch (`pad_left`)")
    return True, f"your logits match `interventions.patched_logits` at layers {layers} on {len(seqs)} prompts"


# ---------------------------------------------------------------- 03: the layer sweep and the best layer


@_checker
def check_read_theta_layers(read_theta, model):
    """Compare read_theta(model, seqs, layer) with `interventions.capture` for an int layer (as in 2.1) and for
    increasing lists of layers (one [prompts, layers, hidden] tensor)."""
    from . import interventions as iv
    from .prompts import DEFAULT_FORMAT as F

    seqs = model.encode([F.icl(_COLOURS, "Plum"), F.query("Sky")])
    states = iv.capture(model, seqs).float().cpu()  # [prompts, layers, hidden]
    last = model.n_layers - 1
    for layer in (model.n_layers // 2, [0, model.n_layers // 2, last], [1, last]):
        ref = states[:, layer]
        got = _tensor(_call(read_theta, model, seqs, layer), "hidden states")
        if isinstance(layer, int) and got.shape != ref.shape:
            return False, (f"for an int layer return [prompts, hidden] as in 2.1, shape {tuple(ref.shape)}; got "
                           f"{tuple(got.shape)}")
        if got.shape != ref.shape:
            return False, (f"for the layers {layer} expected [prompts, layers, hidden], shape {tuple(ref.shape)}; "
                           f"got {tuple(got.shape)} (stack the saved states along dimension 1)")
        if _close(got, ref, model):
            continue
        if isinstance(layer, list) and _close(got, states[:, layer[::-1]], model):
            return False, f"the layers come back reversed; return them in the order asked for, {layer}"
        return False, (f"for layer {layer} your states differ from `capture` by up to {(got - ref).abs().max():.3g}: "
                       f"save each asked-for layer's output at position -1, in one trace")
    return True, "your read_theta reads one layer or several in one pass, as `interventions.capture`"


@_checker
def check_choose_layer(choose_layer, model, n: int = 8):
    """Compare choose_layer(model, dev, test) -> (layer, test accuracy) with the reference: the first layer
    with the best accuracy on the dev split, and the accuracy of θ patched at that layer on the test split.
    On antonyms (next_letter where the tokenizer cannot score antonyms): there, on Gemma 3 270M, the best
    test layer is not the best dev layer, so choosing on test is caught."""
    from . import engine
    from .experiments import quick_tasks
    from .experiments import prepare_split
    from .protocol import KIT, accuracy, best_of

    task = "antonyms" if "antonyms" in quick_tasks(model, 10, need=3 * n) else "next_letter"

    protocol = replace(KIT, n_dev=n, n_test=n)  # the kit's disjoint dev and test queries, scored as your code scores
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


# ---------------------------------------------------------------- 04: cosine distances, leave-one-out 1-NN, silhouette


def _unit_rows(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _loo_1nn_euclidean(X, labels) -> float:
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    dist = np.linalg.norm(X[:, None] - X[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    return float(np.mean(labels[dist.argmin(1)] == labels))


def _loo_1nn_farthest(X, labels) -> float:
    """The mistake of taking the smallest cosine similarity for the nearest: each vector's farthest other vector."""
    unit = _unit_rows(X)
    sim = unit @ unit.T
    np.fill_diagonal(sim, np.inf)
    labels = np.asarray(labels)
    return float(np.mean(labels[sim.argmin(1)] == labels))


def _silhouette_of(dist, labels, count_self: bool = False) -> float:
    """The mean silhouette from a matrix `dist`; `count_self` counts i among its own task in a(i)."""
    labels = np.asarray(labels)
    tasks = np.unique(labels)
    members = {t: labels == t for t in tasks}
    scores = []
    for i, own in enumerate(labels):
        mean_to = {t: dist[i, m].sum() / (m.sum() - (t == own and not count_self)) for t, m in members.items()}
        a = mean_to.pop(own)
        b = min(mean_to.values())
        scores.append((b - a) / max(a, b))
    return float(np.mean(scores))


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
def check_cosine_distances(cosine_distances, X=None):
    """Compare cosine_distances(X) (the [n, n] matrix of 1 - cosine similarity between the rows of X) with
    scikit-learn's, on toy vectors of very different norms and, if given, real task vectors."""
    from sklearn.metrics.pairwise import cosine_distances as reference
    from sklearn.metrics.pairwise import euclidean_distances

    cases = [("toy vectors", example_vectors()[0])]
    if X is not None:
        cases.append(("your vectors", np.asarray(X)))
    for name, x in cases:
        ref = reference(x.astype(np.float64))
        got = _call(cosine_distances, x.copy())
        try:
            got = np.asarray(got.detach().cpu() if hasattr(got, "detach") else got, dtype=np.float64)
        except (TypeError, ValueError):
            return False, f"expected a numpy array of distances, got {type(got).__name__}"
        if got.shape != ref.shape:
            return False, (f"on {name} expected a matrix of shape {ref.shape} (a row and a column per vector), "
                           f"got {got.shape}")

        def close(other):
            return np.allclose(got, other, atol=1e-5, rtol=1e-4)

        if close(ref):
            continue
        unit = _unit_rows(x)
        if close(unit @ unit.T):
            return False, "these are cosine similarities (1 on the diagonal): the distance is 1 - similarity"
        if close(1 - x.astype(np.float64) @ x.T):
            return False, "you skipped the normalisation: divide each row by its norm before the dot products"
        if close(euclidean_distances(x.astype(np.float64))):
            return False, "these are Euclidean distances: use cosine distance, 1 - cosine similarity"
        off = ~np.eye(len(ref), dtype=bool)
        if not np.allclose(np.diag(got), 0, atol=1e-5) and np.allclose(got[off], ref[off], atol=1e-5, rtol=1e-4):
            return False, ("right off the diagonal, but each vector's distance to itself should be 0: leave the "
                           "diagonal as it is here (4.2 excludes each vector's self-match on its own)")
        return False, (f"on {name} your distances differ from 1 - cosine similarity by up to "
                       f"{np.nanmax(np.abs(got - ref)):.3g}")
    return True, f"your distances match scikit-learn's cosine_distances on {name} ({len(ref)} vectors)"


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
        if abs(got - _loo_1nn_farthest(x, y)) < 1e-6:
            return (" (that is the label of each vector's farthest other vector: the smallest similarity is the "
                    "largest distance; take the smallest distance)")
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
        dist = 1 - _unit_rows(x) @ _unit_rows(x).T
        if abs(got - _silhouette_of(dist, y, count_self=True)) < 1e-4:
            return (" (a(i) counted i itself, at distance 0, among its task's vectors: divide the sum by the "
                    "count minus one)")
        if abs(got - _silhouette_of(1 - dist, y)) < 1e-4:
            return " (that is the silhouette of cosine similarities: use distances, 1 - similarity)"
        if abs(got - silhouette_score(x, y, metric="euclidean")) < 1e-4:
            return " (that is the Euclidean silhouette: use cosine distance, 1 - cosine similarity)"
        return ("; a(i) is the mean distance to the other members of i's task, b(i) the smallest mean distance "
                "to another task")

    return _score_cases(silhouette, lambda x, y: float(silhouette_score(x.astype(np.float64), y, metric="cosine")),
                        example_vectors(seed=1), X, labels, "silhouette", 1e-4, mistake)


# The kit's versions of 04's steps (same names and signatures as the exercises' functions).


@_kit
def cosine_distances(X):
    """The [n, n] matrix of cosine distances, 1 - cosine similarity, between the rows of X (exercise 4.1)."""
    from .analyses.geometry import cosine_distances

    return cosine_distances(np.asarray(X, dtype=np.float64))


@_kit
def loo_1nn_accuracy(X, labels):
    """Share of rows whose nearest other row (cosine distance) has the same label (exercise 4.2)."""
    from .analyses.geometry import knn_accuracy

    return knn_accuracy(X, labels, k=1)


@_kit
def silhouette(X, labels):
    """The mean silhouette of the rows of X grouped by label, with cosine distance (exercise 4.3)."""
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(cosine_distances(X), np.asarray(labels), metric="precomputed"))


# ---------------------------------------------------------------- 05: demonstrations of A, θ of B


_CONFLICT_DEMOS = ([("a", "b"), ("m", "n"), ("x", "y")], [("c", "d")], [("p", "q"), ("e", "f")])  # next letter
_CONFLICT_QUERIES = ("k", "s", "h")


def _conflict_thetas(model, layer):
    """θ of the upper-case task, one row per query of `_CONFLICT_QUERIES` (each from its own prompt), so a
    batch that gives every prompt the first row is caught: [3, hidden] at `layer`."""
    from . import interventions as iv
    from .prompts import DEFAULT_FORMAT as F

    upper = [F.icl([("a", "A"), ("m", "M")], "r"), F.icl([("x", "X"), ("c", "C"), ("e", "E")], "t"),
             F.icl([("p", "P")], "w")]
    return iv.capture(model, model.encode(upper))[:, layer]


def _patched_everywhere(model, seqs, theta, layer):
    """Logits with θ written over every position of the layer's output, not only the last one."""
    import torch

    from .batches import pad_left

    with torch.no_grad(), model.nn.trace(pad_left(model, seqs), logits_to_keep=1):
        out = model.nn_layers()[layer].output
        hidden = out[0] if isinstance(out, tuple) else out
        hidden[:] = theta.to(model.dtype)[:, None]
        logits = model.nn.output.logits[:, -1].save()
    return logits


@_checker
def check_conflict_logits(conflict_logits, model, layer=None):
    """Compare conflict_logits(model, demos_a, queries, theta_b, layer) (one ICL prompt per query, its own
    demonstrations of A first, in one left-padded batch, with θ(B) row i written over prompt i's last token
    after decoder layer `layer`) with `interventions.patched_logits`, on three prompts of different lengths."""
    from . import interventions as iv
    from .prompts import DEFAULT_FORMAT as F

    layer = model.n_layers // 2 if layer is None else layer
    demos, queries = [list(d) for d in _CONFLICT_DEMOS], list(_CONFLICT_QUERIES)
    theta = _conflict_thetas(model, layer)
    icl = model.encode([F.icl(d, q) for d, q in zip(demos, queries)])
    ref = iv.patched_logits(model, icl, theta, layer).float().cpu()
    got = _tensor(_call(conflict_logits, model, demos, queries, theta.clone(), layer))
    if got.shape == ref.shape[1:]:
        return False, (f"expected one row of logits per query, shape {tuple(ref.shape)}, got a single row: put "
                       f"all {len(queries)} prompts in one batch")
    if got.shape != ref.shape:
        extra = " (keep only the last position: logits[:, -1])" if got.dim() == 3 else ""
        return False, f"expected logits of shape {tuple(ref.shape)} (queries, vocab), got {tuple(got.shape)}{extra}"
    if _close(got, ref, model):
        return True, (f"your trace matches `interventions.patched_logits`: θ(B) over the demonstrations of A, "
                      f"{len(queries)} prompts of different lengths, layer {layer}")
    mistakes = (
        ("you patched the query alone: the conflict needs A's demonstrations in the prompt, before each query",
         lambda: iv.patched_logits(model, model.encode([F.query(q) for q in queries]), theta, layer)),
        ("these are plain ICL logits: θ(B) was not written (assign it to the layer's output at the last "
         "position, inside the trace, before saving the logits)", lambda: iv.patched_logits(model, icl, None, None)),
        ("every prompt got the first row of theta_b: row i belongs to prompt i (assign the whole [queries, "
         "hidden] tensor to the last position)", lambda: iv.patched_logits(model, icl, theta[0], layer)),
        ("every prompt got the first query's demonstrations: demos_a[i] goes before queries[i]",
         lambda: iv.patched_logits(model, model.encode([F.icl(demos[0], q) for q in queries]), theta, layer)),
        ("you wrote θ(B) over every position of the layer's output: write only the last one, position -1",
         lambda: _patched_everywhere(model, icl, theta, layer)),
    )
    for why, alternative in mistakes:
        if _close(got, alternative().float().cpu(), model):
            return False, why
    for other in range(model.n_layers):
        if other != layer and _close(got, iv.patched_logits(model, icl, theta, other).float().cpu(), model):
            return False, (f"that is θ(B) written after layer {other}, not {layer}: model.nn_layers()[layer] is "
                           f"decoder layer `layer`")
    agree = (got.argmax(-1) == ref.argmax(-1)).sum().item()
    return False, (f"your logits differ from the reference by up to {(got - ref).abs().max():.3g}; the top token "
                   f"agrees on {agree}/{len(queries)} prompts. Left-pad the batch (`pad_left`), so that every "
                   f"prompt's last token is at position -1, and write θ(B) there only")


_CONFLICT_PAIRS = (("present_simple_past_simple", "present_simple_gerund"), ("next_letter", "to_upper"),
                   ("list_last", "list_first"))  # the checker's pair: the first one this tokenizer can score


def conflict_episodes(model, task_a: str, task_b: str, n: int, protocol=None):
    """(episodes_a, episodes_b, answers_b): the episodes `conflict.conflict_hits` scores for one pair. n test
    episodes of A whose query inputs B also answers; n dev episodes of B, whose demonstrations and dummy queries
    give θ(B) (query i gets episode i's); and B's answer to each input."""
    from .analyses.conflict import shared_queries
    from .experiments import sample_split
    from .prompts import DEFAULT_FORMAT
    from .protocol import KIT
    from .tasks import get_task

    protocol = protocol or KIT  # the kit's conventions, which your functions write (conflict_hits(..., protocol=KIT))
    episodes_b = sample_split(model, task_b, "dev", n, protocol, DEFAULT_FORMAT)[1]
    return shared_queries(task_a, task_b, protocol, n, "test"), episodes_b, dict(get_task(task_b).pairs)


def _conflict_scores(model, episodes_a, answers_b, theta, layer):
    """(accuracy on A, accuracy on B) of A's ICL prompts with `theta` written at `layer` (None: plain ICL)."""
    import torch

    from .interventions import patched_logits
    from .prompts import DEFAULT_FORMAT, answer_token_ids
    from .protocol import accuracy

    icl = model.encode([DEFAULT_FORMAT.icl(ep.demos, ep.query[0]) for ep in episodes_a])
    answers = patched_logits(model, icl, theta, None if theta is None else layer).argmax(-1)
    tok = model.tokenizer
    target_a = torch.tensor([answer_token_ids(tok, ep.query[1])[0] for ep in episodes_a])
    target_b = torch.tensor([answer_token_ids(tok, answers_b[ep.query[0]])[0] for ep in episodes_a])
    return accuracy(model, answers, target_a), accuracy(model, answers, target_b)


def _episode_thetas(model, episodes, layer):
    """θ of each episode at `layer` (mean over its dummy prompts), [episodes, hidden]."""
    from .interventions import task_vectors
    from .prompts import DEFAULT_FORMAT

    prompts = [DEFAULT_FORMAT.icl(ep.demos, d) for ep in episodes for d in ep.dummies]
    return task_vectors(model, model.encode(prompts), len(episodes[0].dummies))[:, layer]


@_checker
def check_conflict_accuracy(conflict_accuracy, model, layer=None, n: int = 8):
    """Compare conflict_accuracy(model, episodes_a, episodes_b, answers_b, layer) -> (accuracy on A, accuracy
    on B) with the kit's on n episodes of a pair (past tense -> gerund where the tokenizer scores it), the
    episodes `conflict.conflict_hits` uses."""
    from .prompts import usable_task
    from .tasks import get_task

    usable = [p for p in _CONFLICT_PAIRS if all(len(usable_task(get_task(t), model.tokenizer)[0].pairs) >= 20
                                                for t in p)]
    a, b = (usable or _CONFLICT_PAIRS[1:])[0]
    layer = model.n_layers // 2 if layer is None else layer
    episodes_a, episodes_b, answers_b = conflict_episodes(model, a, b, n)
    got = _call(conflict_accuracy, model, list(episodes_a), list(episodes_b), dict(answers_b), layer)
    ref = KIT["conflict_accuracy"](model, episodes_a, episodes_b, answers_b, layer)
    try:
        got = tuple(float(x) for x in got)
    except (TypeError, ValueError):
        return False, f"expected a pair (accuracy on A, accuracy on B), got {got!r}"
    if len(got) != 2:
        return False, f"expected a pair (accuracy on A, accuracy on B), got {len(got)} values"
    tol = 1e-9 if model.dtype.itemsize == 4 else 1 / n + 1e-9  # half precision: one episode's answer may flip

    def same(x):
        return abs(x[0] - ref[0]) <= tol and abs(x[1] - ref[1]) <= tol

    where = f"{a} -> {b}, {n} episodes, θ(B) at layer {layer}"
    if same(got):
        return True, f"{where}: accuracy on A {ref[0]:.2f}, on B {ref[1]:.2f}, as the kit's `conflict_accuracy`"
    if max(got) > 1:
        return False, f"expected shares between 0 and 1, got {got}: return accuracies, not counts of hits"
    theta_b = _episode_thetas(model, episodes_b, layer)
    mistakes = (
        ("you returned (accuracy on B, accuracy on A): A first", lambda: (ref[1], ref[0])),
        ("both numbers are the accuracy on A's answers: score the same answers against B's answer to each "
         "query input, answers_b[input]", lambda: (ref[0], ref[0])),
        ("both numbers are the accuracy on B's answers: score the first against A's own answer, the episode's "
         "query[1]", lambda: (ref[1], ref[1])),
        ("these are the scores of plain ICL, as if θ(B) was not written: write θ(B) at `layer`, and take it from "
         "episodes_b (θ of A's own episodes would score the same)", lambda: _conflict_scores(
            model, episodes_a, answers_b, None, layer)),
        ("θ came from A's episodes: take θ(B) from episodes_b, the demonstrations and dummies of task B",
         lambda: _conflict_scores(model, episodes_a, answers_b, _episode_thetas(model, episodes_a, layer), layer)),
        ("every query got θ of B's first episode: query i gets θ of episodes_b[i]",
         lambda: _conflict_scores(model, episodes_a, answers_b, theta_b[0], layer)),
        ("every query got the mean θ over B's episodes: the paper gives query i the θ of B's episode i",
         lambda: _conflict_scores(model, episodes_a, answers_b, theta_b.mean(0), layer)),
    )
    for why, alternative in mistakes:
        alt = alternative()
        if not same(alt) and all(abs(x - y) <= tol for x, y in zip(got, alt)):
            return False, f"{why} ({where})"
    return False, (f"{where}: expected accuracy on A {ref[0]:.2f} and on B {ref[1]:.2f}, got {got[0]:.2f} and "
                   f"{got[1]:.2f}. θ(B) per episode is mean_theta of B's episode (its demos and dummies) at "
                   f"`layer`; the answers are the argmax of conflict_logits over A's demos and queries; the targets "
                   f"are each answer's first token, answer_token_ids(model.tokenizer, answer)[0]")


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


# the kit's versions of 05's steps (same names and signatures): later cells run these until yours pass


@_kit
def conflict_logits(model, demos_a, queries, theta_b, layer):
    """Next-token logits [len(queries), vocab] of the ICL prompts `demos_a[i]` + `queries[i]`, with row i of
    θ(B) written over prompt i's last token after decoder layer `layer` (exercise 5.1)."""
    from .interventions import patched_logits
    from .prompts import DEFAULT_FORMAT

    return patched_logits(model, model.encode([DEFAULT_FORMAT.icl(d, q) for d, q in zip(demos_a, queries)]),
                          theta_b, layer)


@_kit
def conflict_accuracy(model, episodes_a, episodes_b, answers_b, layer):
    """(accuracy on A's answers, accuracy on B's answers) of A's episodes with θ(B) of B's episode i written
    over query i at `layer` (exercise 5.2)."""
    import torch

    from .prompts import DEFAULT_FORMAT, answer_token_ids
    from .protocol import accuracy

    theta_b = _episode_thetas(model, episodes_b, layer)
    logits = conflict_logits(model, [ep.demos for ep in episodes_a], [ep.query[0] for ep in episodes_a], theta_b,
                             layer)
    answers, tok = logits.argmax(-1), model.tokenizer
    target_a = torch.tensor([answer_token_ids(tok, ep.query[1], DEFAULT_FORMAT)[0] for ep in episodes_a])
    target_b = torch.tensor([answer_token_ids(tok, answers_b[ep.query[0]], DEFAULT_FORMAT)[0] for ep in episodes_a])
    return accuracy(model, answers, target_a), accuracy(model, answers, target_b)


@_kit
def follows(table, task_a, task_b):
    """The task whose answers the model gives in the conflicting run of a pair (exercise 5.3)."""
    from .analyses.conflict import followed_task

    return followed_task(table, task_a, task_b)


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
    return False, (f"your log-probabilities differ from the reference by up to {(got - ref).abs().max():.3g}; the "
                   f"top token agrees on {agree}/{len(vectors)} vectors (final norm, then unembedding, then "
                   f"log_softmax)")


def _answer_picks(logp):
    """One answer token per row of `logp`: the top token, a token that ties with another (if the row has
    one; else rank 5), and tokens deep in the list; with the number of tokens tied with each answer."""
    import torch

    order = logp.argsort(-1, descending=True)
    vocab_size = logp.shape[-1]
    answers = []
    for i, row in enumerate(logp):
        pick = order[i, [0, min(5, vocab_size - 1), vocab_size // 10, vocab_size // 2][i % 4]]
        if i % 4 == 1:
            values, counts = row.unique(return_counts=True)
            if (counts > 1).any():
                tied = values[counts > 1].max()  # the best-ranked value shared by several tokens
                pick = (row == tied).nonzero()[-1, 0]
        answers.append(int(pick))
    answers = torch.tensor(answers)
    ties = (logp == logp.gather(1, answers[:, None])).sum(1)
    return answers, ties


def _ranks(got, n: int, what: str = "ranks"):
    """A student's ranks or medians as a float tensor."""
    import torch

    try:
        return torch.as_tensor(np.asarray(got.detach().cpu() if hasattr(got, "detach") else got, dtype=np.float64))
    except (TypeError, ValueError):
        raise _Raised(f"expected {n} {what} (a tensor, array or list), got {type(got).__name__}") from None


@_checker
def check_answer_rank(answer_rank, model):
    """Compare answer_rank(model, hidden, answer_ids) (project each hidden state onto the vocabulary, then
    the rank of its row's answer token, 0 = top, ties in the answer's favour) with `vocab.answer_rank` of
    `vocab.project`, on hidden states of two prompts at two layers, with answers at the top, in a tie and deep
    in the list."""
    import torch

    from . import interventions as iv
    from .analyses.vocab import answer_rank as reference
    from .analyses.vocab import project
    from .prompts import DEFAULT_FORMAT as F

    states = iv.capture(model, model.encode([F.icl(_COLOURS, "Plum"), F.icl([("dog", "chien")], "cat")]))
    vectors = states[:, [model.n_layers // 2, model.n_layers - 1]].reshape(-1, states.shape[-1]).float()
    logp = project(model, vectors)
    answers, ties = _answer_picks(logp)
    ref = reference(logp, answers).double()
    got = _ranks(_call(answer_rank, model, vectors.clone(), answers.clone()), len(ref)).flatten()
    if got.shape != ref.shape:
        return False, f"expected one rank per hidden state, shape {tuple(ref.shape)}, got {tuple(got.shape)}"
    if torch.equal(got, ref):
        return True, f"ranks {ref.long().tolist()} (0 = the top token; a tie counts in the answer's favour)"
    if torch.equal(got, ref + 1) or torch.equal(got, ref + ties):
        return False, ("your ranks start at 1 (the answer counted itself, and any token tied with it): count "
                       "the tokens strictly more likely than the answer (0 = top)")
    if torch.equal(got, logp.shape[-1] - ties - ref):
        return False, "you counted the tokens less likely than the answer: count those more likely (0 = top)"
    tied = ties > 1
    if tied.any() and torch.equal(got[~tied], ref[~tied]) and ((got >= ref) & (got <= ref + ties - 1))[tied].all():
        return False, ("right except where the answer ties with other tokens (the same log-probability): count "
                       "only the tokens strictly more likely, so a tie counts in the answer's favour")
    with torch.no_grad():
        no_norm = torch.log_softmax(model.unembed(vectors.to(model.device, model.dtype)).float(), -1).cpu()
    if torch.equal(got, reference(no_norm, answers).double()):
        return False, "these are ranks without the final norm: project with your project_to_vocab first"
    return False, (f"expected ranks {ref.long().tolist()}, got {got.tolist()}: project with project_to_vocab, then "
                   f"count the tokens of each row strictly more likely than its answer")


@_checker
def check_rank_by_layer(median_rank_by_layer, model):
    """Compare median_rank_by_layer(model, theta, answer_ids) (θ of N episodes at every layer, [N, n_layers,
    hidden]: at each layer, the median over the episodes of the answer's rank) with `vocab.answer_rank` of
    `vocab.project`, layer by layer, on three prompts."""
    import torch

    from . import interventions as iv
    from .analyses.vocab import answer_rank as reference
    from .analyses.vocab import project
    from .prompts import DEFAULT_FORMAT as F

    queries, answers = ["Plum", "Sky", "Snow"], [" Purple", " Blue", " White"]
    theta = iv.capture(model, model.encode([F.icl(_COLOURS, q) for q in queries])).float()  # [3, layers, hidden]
    answer_ids = torch.tensor([ids[-1] for ids in model.encode(answers)])
    per_layer = torch.stack([reference(project(model, theta[:, layer]), answer_ids)
                             for layer in range(theta.shape[1])]).double()  # [layers, episodes]
    ref = per_layer.median(1).values
    got = _ranks(_call(median_rank_by_layer, model, theta.clone(), answer_ids.clone()), len(ref), "medians")
    if got.shape != ref.shape:
        if got.numel() == per_layer.numel():
            return False, (f"expected one median per layer, shape {tuple(ref.shape)}, got {tuple(got.shape)}: "
                           f"take the median over the episodes")
        return False, (f"expected one median per layer ({theta.shape[1]} layers, theta.shape[1]), shape "
                       f"{tuple(ref.shape)}, got {tuple(got.shape)}")
    if torch.equal(got, ref):
        return True, (f"your medians match `vocab.answer_rank` layer by layer on {len(queries)} prompts (from "
                      f"{int(ref.max())} at worst to {int(ref.min())} at best)")
    if torch.allclose(got, per_layer.mean(1)):
        return False, "that is the mean rank over the episodes: take the median (a few deep ranks dominate a mean)"
    if len(ref) > 1 and torch.equal(got[1:], ref[:-1]):
        return False, "your medians are one layer off: theta[:, layer] is the state after decoder layer `layer`"
    return False, (f"expected medians {ref.long().tolist()}, got {got.tolist()}: at each layer, the ranks of "
                   f"answer_rank(model, theta[:, layer], answer_ids), then their median")


# The kit's versions of 06's steps (same names and signatures as the exercises' functions).


@_kit
def project_to_vocab(model, vectors):
    """Log-probabilities over the vocabulary of hidden states [N, hidden]: final norm, unembedding,
    log-softmax (exercise 6.1)."""
    from .analyses.vocab import project

    return project(model, vectors)


@_kit
def answer_rank(model, hidden, answer_ids):
    """The rank of each row's answer token (0 = top) when its hidden state is projected onto the vocabulary
    (exercise 6.2)."""
    from .analyses.vocab import answer_rank as rank

    return rank(project_to_vocab(model, hidden), answer_ids.cpu())


@_kit
def median_rank_by_layer(model, theta, answer_ids):
    """For θ of N episodes at every layer [N, n_layers, hidden], the median rank of the episodes' answers at
    each layer (exercise 6.3)."""
    import torch

    return torch.stack([answer_rank(model, theta[:, layer], answer_ids).float().median()
                        for layer in range(theta.shape[1])])


# ---------------------------------------------------------------- 07: your own task, from raw pairs to a tested layer

# word -> its first letter: one-token answers on Gemma 3, and a task the model applies at intermediate layers only
_FIRST_LETTERS = [("apple", "a"), ("banana", "b"), ("cherry", "c"), ("dog", "d"), ("engine", "e"), ("forest", "f"),
                  ("garden", "g"), ("house", "h"), ("island", "i"), ("jacket", "j"), ("kitten", "k"), ("lemon", "l")]
_THINGS = [("Apple", "Red"), ("Lime", "Green"), ("Coal", "Black"), ("Sky", "Blue"), ("Snow", "White"),
           ("Banana", "Yellow"), ("Grass", "Green"), ("Blood", "Red")]


def _parts(episode, i: int):
    """(demos, dummies, query) of an episode, or a message naming what is not an Episode."""
    try:
        return tuple(map(tuple, episode.demos)), tuple(episode.dummies), tuple(episode.query)
    except (AttributeError, TypeError):
        raise _Raised(f"episode {i} is a {type(episode).__name__}: make each one an "
                      f"Episode(demos=..., dummies=..., query=...) (from tv_utils.tasks)") from None


def _episode_problem(episodes, pairs, n: int, k: int) -> str | None:
    """What breaks the contract of make_episodes, or None."""
    if len(episodes) != n:
        return f"asked for n={n} episodes, got {len(episodes)}"
    known = set(pairs)
    for i, ep in enumerate(episodes):
        demos, dummies, query = _parts(ep, i)
        if len(demos) != k:
            return f"episode {i} has {len(demos)} demonstrations, asked for k={k}"
        if len(dummies) != 2:
            return f"episode {i} has {len(dummies)} dummy queries, expected 2"
        if not all(isinstance(d, str) for d in dummies):
            return f"episode {i}'s dummies are {dummies}: a dummy is an input alone (the x of a pair), a string"
        if len(query) != 2:
            return f"episode {i}'s query is {query}: keep the whole pair (x, y), its y is the answer to score"
        strangers = [p for p in (*demos, query) if p not in known] + [d for d in dummies if d not in dict(pairs)]
        if strangers:
            return f"episode {i} holds {strangers[0]!r}, which is not among the pairs (or their inputs) it was given"
        inputs = [x for x, _ in demos] + list(dummies) + [query[0]]
        twice = [x for x in inputs if inputs.count(x) > 1]
        if twice:
            return (f"episode {i} uses {twice[0]!r} twice (demonstrations {[x for x, _ in demos]}, dummies "
                    f"{list(dummies)}, query {query[0]!r}): draw its k + 3 pairs without replacement")
    return None


@_checker
def check_make_episodes(make_episodes):
    """Check make_episodes(pairs, n, k, seed) (n episodes of k demonstrations, 2 dummy inputs and a query pair,
    no pair twice in an episode) on its invariants: sizes, no overlap, every pair used in every role, the same
    seed giving the same episodes and another seed others. Any seeded sampler passes; none is prescribed."""
    pairs = list(_FIRST_LETTERS)
    n, k = 200, 3
    got = _call(make_episodes, pairs, n, k, 0)
    if pairs != _FIRST_LETTERS:
        return False, "your function reordered or changed the list of pairs it was given: sample from it (or a copy)"
    try:
        episodes = list(got)
    except TypeError:
        return False, f"expected a list of episodes, got {type(got).__name__}"
    problem = _episode_problem(episodes, pairs, n, k) or _episode_problem(list(_call(make_episodes, pairs, 4, 5, 0)),
                                                                         pairs, 4, 5)
    if problem:
        return False, problem
    parts = [_parts(ep, i) for i, ep in enumerate(episodes)]
    if len(set(parts)) < n // 2:
        return False, (f"only {len(set(parts))} different episodes among {n}: draw each episode anew from one "
                       f"random generator (seeded once, before the loop)")
    roles = {"query": {q[0] for _, _, q in parts}, "dummy": {d for _, ds, _ in parts for d in ds},
             "demonstration": {x for ds, _, _ in parts for x, _ in ds}}
    for role, used in roles.items():
        if len(used) < len(pairs):
            missing = [x for x, _ in pairs if x not in used]
            return False, (f"in {n} episodes, {missing[0]!r} is never a {role}: every pair should be drawn at "
                           f"random into every role")
    if [_parts(ep, i) for i, ep in enumerate(_call(make_episodes, pairs, n, k, 0))] != parts:
        return False, ("the same seed gave other episodes: draw from a generator made from the seed "
                       "(`random.Random(seed)`), not from the global random state")
    if [_parts(ep, i) for i, ep in enumerate(_call(make_episodes, pairs, n, k, 1))] == parts:
        return False, "seeds 0 and 1 gave the same episodes: the seed must set the generator"
    return True, (f"{n} episodes of {k} demonstrations + 2 dummies + a query from {len(pairs)} pairs: no pair "
                  f"twice in an episode, every pair in every role, reproducible from the seed. E.g. {episodes[0]}")


def _dummy_states(model, episodes):
    """Last-token states of each episode's dummy prompts `demos + x' ->`: [episodes, dummies, layers, hidden]."""
    from .interventions import capture
    from .prompts import DEFAULT_FORMAT as F

    states = capture(model, model.encode([F.icl(ep.demos, d) for ep in episodes for d in ep.dummies]))
    return states.float().cpu().view(len(episodes), -1, *states.shape[1:])


@_checker
def check_own_theta(own_theta, model):
    """Compare own_theta(model, episodes, layer) (per episode, the mean of its dummy prompts' last-token states
    after `layer`) with `interventions.capture` on three episodes, at two layers."""
    from .interventions import capture
    from .prompts import DEFAULT_FORMAT as F

    episodes = KIT["make_episodes"](_THINGS, 3, 3, 0)
    states = _dummy_states(model, episodes)
    for layer in sorted({model.n_layers // 2, model.n_layers // 4}):
        ref = states[:, :, layer].mean(1)
        got = _tensor(_call(own_theta, model, list(episodes), layer), "task vectors")
        if got.shape != ref.shape:
            if tuple(got.shape) == tuple(ref.shape[1:]):
                return False, ("that is one vector for all episodes: θ is per episode, [episodes, hidden], each "
                               "the mean over its own dummy prompts only")
            if tuple(got.shape) == tuple(states[:, :, layer].shape):
                return False, "that is one state per dummy prompt: average each episode's two dummy prompts"
            return False, f"expected θ of shape {tuple(ref.shape)} (episodes, hidden), got {tuple(got.shape)}"
        if _close(got, ref, model):
            continue
        for other in range(model.n_layers):
            if _close(got, states[:, :, other].mean(1), model):
                return False, (f"asked for layer {layer}, you returned θ after layer {other}: `capture` gives "
                               f"[prompts, layers, hidden], and index `layer` is the state after that layer")
        if _close(got, states[:, 0, layer], model):
            return False, "that is θ of each episode's first dummy prompt only: average over both dummies"
        if _close(got, states[:, :, layer].mean((0, 1)).expand_as(got), model):
            return False, "every episode got the same θ: average each episode's own dummies, not all prompts"
        query = capture(model, model.encode([F.icl(ep.demos, ep.query[0]) for ep in episodes]))[:, layer].float().cpu()
        if _close(got, query, model):
            return False, ("that is the state of each episode's real query prompt: θ comes from the dummy queries "
                           "x' (the query is then answered without demonstrations)")
        alone = capture(model, model.encode([F.query(d) for ep in episodes for d in ep.dummies]))[:, layer].float()
        if _close(got, alone.cpu().view(len(episodes), -1, alone.shape[-1]).mean(1), model):
            return False, "your dummy prompts lack the demonstrations: one prompt `demos + x' ->` per dummy x'"
        return False, (f"at layer {layer} your θ differs from the mean over each episode's dummy prompts by up to "
                       f"{(got - ref).abs().max():.3g}: one prompt `DEFAULT_FORMAT.icl(ep.demos, x')` per dummy, "
                       f"states at `layer`, mean per episode")
    return True, "your θ matches the mean of `capture` over each episode's dummy prompts, at two layers"


class _Spy:
    """Record the calls a function makes to the steps `names`, wherever it finds them: its own module's globals
    (a notebook's names), `course.functions` (your kept functions, the kit's), or inside the kit's steps."""

    def __init__(self, fn, names):
        own = getattr(fn, "__globals__", {})
        self.scopes = [own, KIT, _PASSED] + ([globals()] if own is not globals() else [])  # + the kit's own calls
        self.names, self.calls, self.saved = names, {name: [] for name in names}, []

    def _wrap(self, name, inner):
        @functools.wraps(inner)
        def record(*args, **kwargs):
            out = inner(*args, **kwargs)
            self.calls[name].append((args, kwargs, out))
            return out

        return record

    def __enter__(self):
        for scope in self.scopes:
            for name in self.names:
                if callable(scope.get(name)) and not any(s is scope and n == name for s, n, _ in self.saved):
                    self.saved.append((scope, name, scope[name]))
                    scope[name] = self._wrap(name, scope[name])
        return self.calls

    def __exit__(self, *exc):
        for scope, name, fn in reversed(self.saved):
            scope[name] = fn
        return False


def _own_sweep(model, episodes, layers, states=None):
    """Accuracy per layer of each episode's θ (mean over its dummy prompts) patched into its query alone."""
    import torch

    from .interventions import patched_logits
    from .prompts import DEFAULT_FORMAT as F, answer_token_ids
    from .protocol import accuracy

    theta = (_dummy_states(model, episodes) if states is None else states).mean(1)
    queries = model.encode([F.query(ep.query[0]) for ep in episodes])
    target = torch.tensor([answer_token_ids(model.tokenizer, ep.query[1])[0] for ep in episodes])
    return [accuracy(model, patched_logits(model, queries, theta[:, layer], layer).argmax(-1), target)
            for layer in layers]


@_checker
def check_sweep_own_task(sweep_own_task, model):
    """Compare sweep_own_task(model, pairs, layers, n, k, seed) (accuracy per layer of each episode's θ patched
    into its query alone) with the reference on the same episodes; it must build them with make_episodes and
    take θ with own_theta (yours, or the kit's from `course.functions`)."""
    pairs, n, k = list(_FIRST_LETTERS), 6, 3
    layers = sorted({model.n_layers // 4, model.n_layers // 2 + 1})
    with _Spy(sweep_own_task, ("make_episodes", "own_theta")) as calls:
        got = _call(sweep_own_task, model, pairs, layers, n, k, 0)
    try:
        got = [float(a) for a in np.asarray(got.tolist() if hasattr(got, "tolist") else got, dtype=float).ravel()]
    except (TypeError, ValueError):
        return False, f"expected one accuracy per layer (a list of floats), got {got!r}"
    if len(got) != len(layers):
        return False, f"asked for layers {layers}, got {len(got)} accuracies: one per layer, in the order of `layers`"
    if not calls["make_episodes"]:
        return False, "your sweep did not call make_episodes: build the episodes with make_episodes(pairs, n, k, seed)"
    if not calls["own_theta"]:
        return False, "your sweep did not call own_theta: take θ at each layer with own_theta(model, episodes, layer)"
    args, kwargs, episodes = calls["make_episodes"][0]
    try:
        given = inspect.signature(KIT["make_episodes"]).bind(*args, **kwargs).arguments
    except TypeError as e:
        return False, f"your sweep called make_episodes with arguments it does not take ({e})"
    if [list(given["pairs"]), given["n"], given["k"], given["seed"]] != [pairs, n, k, 0]:
        return False, "your sweep called make_episodes with other arguments: pass on pairs, n, k and seed as given"
    episodes = list(episodes)
    states = _dummy_states(model, episodes)
    for args, kwargs, theta in calls["own_theta"]:
        try:
            layer = inspect.signature(KIT["own_theta"]).bind(*args, **kwargs).arguments["layer"]
        except TypeError as e:
            return False, f"your sweep called own_theta with arguments it does not take ({e})"
        if not (isinstance(layer, int) and 0 <= layer < model.n_layers):
            continue
        theta, ref = _tensor(theta, "task vectors"), states[:, :, layer].mean(1)
        if theta.shape != ref.shape or not _close(theta, ref, model):
            return False, (f"the θ your own_theta returned at layer {layer} is not the mean over each episode's "
                           f"dummy prompts: make its check (exercise 7.2) pass first")
    ref = _own_sweep(model, episodes, layers, states)
    if all(abs(g - r) < 1e-6 for g, r in zip(got, ref)):
        return True, (f"accuracy per layer {dict(zip(layers, [round(r, 2) for r in ref]))} on {n} episodes of "
                      f"the checker's first-letter task, as the reference on your episodes")
    return False, (f"on your episodes the accuracies at layers {layers} are {[round(r, 2) for r in ref]}, you got "
                   f"{[round(g, 2) for g in got]}: write each query alone (`example:{{x}}->`), patch its own "
                   f"episode's θ at the layer, and count a hit when the top token matches the answer's first "
                   f"token (`answer_token_ids`, compared by `accuracy`)")


@_kit
def make_episodes(pairs, n, k, seed):
    """n episodes from your pairs, each k demonstrations, 2 dummy inputs and a query pair, no pair twice in an
    episode; reproducible from the seed (exercise 7.1)."""
    import random

    from .tasks import Episode

    pairs = list(pairs)
    if len(pairs) < k + 3:
        raise ValueError(f"an episode needs k + 3 = {k + 3} pairs ({k} demonstrations, 2 dummies, 1 query); "
                         f"got {len(pairs)}")
    rng = random.Random(seed)
    episodes = []
    for _ in range(n):
        drawn = rng.sample(pairs, k + 3)
        episodes.append(Episode(demos=tuple(drawn[:k]), dummies=tuple(x for x, _ in drawn[k:k + 2]),
                                query=drawn[-1]))
    return episodes


@_kit
def own_theta(model, episodes, layer):
    """θ per episode at `layer`: the mean of its dummy prompts' last-token states, [episodes, hidden] (7.2)."""
    from .interventions import capture
    from .prompts import DEFAULT_FORMAT

    states = capture(model, model.encode([DEFAULT_FORMAT.icl(ep.demos, d) for ep in episodes for d in ep.dummies]))
    return states[:, layer].view(len(episodes), -1, states.shape[-1]).mean(1)


@_kit
def sweep_own_task(model, pairs, layers, n, k, seed):
    """Accuracy per layer of θ from make_episodes and own_theta, patched into each query alone (7.3)."""
    import torch

    from .interventions import patched_logits
    from .prompts import DEFAULT_FORMAT, answer_token_ids
    from .protocol import accuracy

    episodes = make_episodes(pairs, n, k, seed)
    queries = model.encode([DEFAULT_FORMAT.query(ep.query[0]) for ep in episodes])
    target = torch.tensor([answer_token_ids(model.tokenizer, ep.query[1])[0] for ep in episodes])
    return [accuracy(model, patched_logits(model, queries, own_theta(model, episodes, layer), layer).argmax(-1), target)
            for layer in layers]


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


def _fv_probe(model):
    """Mean head states of three short prompts [n_layers, n_heads, head_dim], and the heads of a function
    vector: two of one layer and one of another, in mixed order."""
    from .analyses import function_vectors as fv
    from .prompts import DEFAULT_FORMAT as F

    prompts = [F.icl(_COLOURS, "Plum"), F.icl(_COLOURS[:2], "Sky"), F.query("Snow")]
    mean_states = fv.head_states(model, model.encode(prompts)).mean(0)
    mid, last, heads = model.n_layers // 2, model.n_layers - 1, fv.n_heads(model)
    return mean_states, [(mid, 0), (last, 1 % heads), (mid, heads - 1)]


def _fv_mistakes(model, mean_states, heads) -> dict:
    """The function vector with the post-attention norm left out or misapplied, or with every head of a layer."""
    import torch

    from .analyses import function_vectors as fv

    out = dict.fromkeys(("skipped", "each head", "chosen only", "all heads"), 0)
    with torch.no_grad():
        for layer in sorted({layer for layer, _ in heads}):
            outputs = fv.head_outputs(model, mean_states[layer], layer)  # [n_heads, hidden]
            chosen = [outputs[head] for at, head in heads if at == layer]
            norm = fv.post_attention_norm(model, layer)
            if norm is None:
                norm = torch.nn.Identity()
            out["skipped"] = out["skipped"] + sum(chosen)
            out["each head"] = out["each head"] + sum(norm(o) for o in chosen)
            out["chosen only"] = out["chosen only"] + norm(sum(chosen))
            out["all heads"] = out["all heads"] + norm(outputs.sum(0))
    return {name: vector.float().cpu() for name, vector in out.items()}


@_checker
def check_function_vector(build_function_vector, model):
    """Compare build_function_vector(model, mean_states, heads) (the chosen heads' mean outputs as they reach
    the residual stream, through the post-attention norm where the model has one) with
    `function_vectors.function_vector`."""
    from .analyses import function_vectors as fv

    mean_states, heads = _fv_probe(model)
    has_norm = fv.post_attention_norm(model, heads[0][0]) is not None
    for chosen in (heads, heads[-1:]):
        ref = fv.function_vector(model, mean_states, chosen).float().cpu()
        got = _tensor(_call(build_function_vector, model, mean_states.clone(), list(chosen)), "a vector")
        if got.shape != ref.shape:
            return False, f"expected one vector of shape {tuple(ref.shape)} (hidden), got {tuple(got.shape)}"
        if _close(got, ref, model):
            continue
        mistakes = _fv_mistakes(model, mean_states, chosen)
        if has_norm and _close(got, mistakes["skipped"], model):
            ratio = ref.norm() / mistakes["skipped"].norm()
            return False, (f"that is the heads' outputs before the post-attention norm, about {ratio:.0f} times too "
                           f"small here: this model normalizes the attention output before adding it to the "
                           f"residual stream (fv.post_attention_norm(model, layer) gives the norm, or None)")
        if has_norm and _close(got, mistakes["each head"], model):
            return False, ("you normalized each head's output on its own, but an RMS norm divides by the size of "
                           "its whole input, so norm(a + b) is not norm(a) + norm(b): scale the chosen heads' "
                           "outputs by the factor the norm applies to the layer's whole attention output")
        if has_norm and len(chosen) > 1 and _close(got, mistakes["chosen only"], model):
            return False, ("you normalized the chosen heads' sum alone, but the model normalizes the whole attention "
                           "output, every head of the layer together: take the factor norm(total) / total from "
                           "the sum over all the layer's heads, and apply it to the chosen heads' share")
        if _close(got, mistakes["all heads"], model):
            return False, "that adds every head of the chosen layers: keep only the heads in `heads`"
        return False, (f"heads {chosen}: off by up to {(got - ref).abs().max():.3g} (the vector's largest entry is "
                       f"{ref.abs().max():.3g}); per layer, add the chosen heads' outputs from the mean states"
                       + (", scale them by norm(total) / total with total the sum over all heads of the layer, "
                          if has_norm else ", ") + "then add up the layers")
    norm = "through the post-attention norm" if has_norm else f"({model.name} has no post-attention norm)"
    return True, f"your function vector matches `function_vectors.function_vector` for heads {heads}, {norm}"


@_checker
def check_add_function_vector(add_function_vector, model):
    """Compare add_function_vector(model, seqs, vector, layer) (greedy next token per prompt, with `vector` added
    to the last token's state after decoder layer `layer`) with `function_vectors.added_sweep`."""
    import torch

    from . import engine
    from .analyses import function_vectors as fv
    from .interventions import capture
    from .prompts import DEFAULT_FORMAT as F

    seqs = model.encode([F.query(x) for x in ("hot", "Apple", "big", "dog", "Sky", "up", "Paris", "three")])
    states = capture(model, seqs).float()
    hidden = states.shape[-1]
    noise = torch.randn(hidden, generator=torch.Generator().manual_seed(0))
    for layer in sorted({model.n_layers // 2, model.n_layers - 2}):
        vector = noise / noise.norm() * states[:, layer].norm(dim=-1).mean() * 2  # as large as the state, twice
        got = _call(add_function_vector, model, seqs, vector.clone(), layer)
        ref = fv.added_sweep(model, seqs, vector, [layer])[:, 0].cpu()
        if not isinstance(got, torch.Tensor):
            return False, f"expected a tensor of token ids, got {type(got).__name__}"
        got = got.detach().cpu()
        if got.shape != ref.shape:
            return False, (f"expected one token id per prompt, shape {tuple(ref.shape)}, got {tuple(got.shape)}: "
                           f"take the argmax of the last position's logits")
        if torch.equal(got.long(), ref.long()):
            continue
        if torch.equal(got, engine.next_tokens(model, seqs).cpu()):
            return False, "those are the model's answers without the vector: add it inside the trace"
        replaced = engine.layer_sweep(model, seqs, vector.expand(model.n_layers, -1), [layer])[:, 0].cpu()
        if torch.equal(got, replaced):
            return False, "you replaced the state with the vector: a function vector is added to the state"
        for other in (layer - 1, layer + 1):
            if torch.equal(got, fv.added_sweep(model, seqs, vector, [other])[:, 0].cpu()):
                return False, (f"that is the vector added after layer {other}: add it to the output of decoder "
                               f"layer {layer} (model.nn_layers()[{layer}])")
        return False, (f"layer {layer}: {(got != ref).sum().item()} of {len(ref)} answers differ; add the vector to "
                       f"the last position of the layer's output, then take the argmax of the last logits")
    return True, "your answers match `function_vectors.added_sweep` at two layers, with a vector as large as the state"


@_kit
def head_contribution(model, states, layer, head):
    """Head `head`'s output at `layer`, [N, hidden], from the heads' states [N, n_heads, head_dim] (exercise 8.1)."""
    from .analyses import function_vectors as fv

    return fv.head_outputs(model, states, layer)[..., head, :]


@_kit
def indirect_effect(model, seqs, answers, layer, head, state):
    """Mean rise of p(answer) with head `head` of `layer` set to `state` at the last token (exercise 8.2)."""
    from .analyses import function_vectors as fv

    patched = fv.head_patched_probs(model, seqs, answers, layer, head, state)
    return (patched - fv.head_patched_probs(model, seqs, answers, layer, head, None)).mean().item()


@_kit
def build_function_vector(model, mean_states, heads):
    """The chosen heads' mean outputs as they reach the residual stream, summed: [hidden] (exercise 8.3)."""
    from .analyses import function_vectors as fv

    return fv.function_vector(model, mean_states, heads)


@_kit
def add_function_vector(model, seqs, vector, layer):
    """Greedy next token per prompt with `vector` added to the last token's state after `layer` (exercise 8.4)."""
    from .analyses import function_vectors as fv

    return fv.added_sweep(model, seqs, vector, [layer])[:, 0]


# ---------------------------------------------------------------- the kit's versions of 02's and 03's steps
# Same names and signatures as the exercises' functions: later cells run these until yours pass their checks.


@_kit
def read_theta(model, seqs, layer):
    """The state after decoder layer `layer` at each prompt's last token, [len(seqs), hidden] (exercise 2.1)."""
    from .interventions import capture

    return capture(model, seqs)[:, layer]


@_kit
def patch_theta(model, seqs, theta, layer):
    """Next-token logits of `seqs` with θ written over the last token's state after `layer` (exercise 2.2)."""
    from .interventions import patched_logits

    return patched_logits(model, seqs, theta, layer)


@_kit
def mean_theta(model, demos, dummies, layer):
    """θ averaged over one prompt `demos + dummy ->` per dummy query, at `layer` (exercise 2.3)."""
    from .interventions import task_vectors
    from .prompts import DEFAULT_FORMAT

    return task_vectors(model, model.encode([DEFAULT_FORMAT.icl(demos, d) for d in dummies]), len(dummies))[0, layer]


@_kit
def tv_accuracy(model, split, layer):
    """Accuracy of each episode's own θ, read and patched at `layer`, on a split's queries (exercise 3.1)."""
    from . import engine
    from .protocol import accuracy

    return accuracy(model, engine.layer_sweep(model, split.queries, split.theta, [layer])[:, 0], split.target)


@_kit
def choose_layer(model, dev, test):
    """(layer, test accuracy): the first layer with the best dev accuracy, scored on test (exercise 3.2)."""
    from . import engine
    from .protocol import accuracy, best_of

    layers = list(range(model.n_layers))
    dev_acc = accuracy(model, engine.layer_sweep(model, dev.queries, dev.theta), dev.target[:, None], dim=0)
    best = best_of(layers, dev_acc)
    return best, tv_accuracy(model, test, best)

