"""The notebooks' exercises: every one is rated, hinted, checked and solved in the agreed shape; each folded
solution (read from the notebook: the only copy) passes its checker on a tiny random Llama or toy data;
wrong answers and stubs are rejected with a useful message."""

import inspect
import json
import linecache
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tv_utils import answer_key
from tv_utils import exercises as ex
from tv_utils.interventions import pad_left
from tv_utils.protocol import KIT

pytestmark = pytest.mark.tiny

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
    import random
    from operator import attrgetter

    import pandas as pd

    from tv_utils import course, interventions
    from tv_utils.analyses import function_vectors as fv
    from tv_utils.protocol import accuracy, best_of
    from tv_utils.prompts import DEFAULT_FORMAT, answer_token_ids
    from tv_utils.tasks import Episode

    namespace = {**ex.KIT, "np": np, "pd": pd, "torch": torch, "pad_left": pad_left,  # KIT: earlier steps
                 "capture": interventions.capture, "patched_logits": interventions.patched_logits,
                 "task_vectors": interventions.task_vectors, "accuracy": accuracy, "best_of": best_of,
                 "DEFAULT_FORMAT": DEFAULT_FORMAT, "answer_token_ids": answer_token_ids, "fv": fv,
                 "attrgetter": attrgetter, "random": random, "Episode": Episode,
                 "fns": course.Functions(list(ex.KIT))}  # a notebook's `fns = course.functions(...)`
    filename = f"<solution of {name}, {hash(code) & 0xffffffff:08x}>"  # 2.1 and 3.1 both define read_theta
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)  # nnsight reads the source
    exec(compile(code, filename, "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize("notebook, number, checker, name, code", EXERCISES, ids=[e[1] for e in EXERCISES])
def test_notebook_solution_passes_its_checker(capsys, monkeypatch, tiny_llama, notebook, number, checker, name,
                                              code):
    check = getattr(ex, checker)
    needs_model = "model" in inspect.signature(check).parameters
    args = (tiny_llama,) if needs_model else ()
    assert check(_solution(code, name), *args) is True, capsys.readouterr().out
    assert capsys.readouterr().out.startswith("✅ Correct:")
    if name in ex.KIT:  # a step later cells run: kept, and its source alone (as a later notebook loads it) passes
        path = ex.kept_dir() / f"{name}.py"
        monkeypatch.setattr(ex, "_PASSED", {})  # a fresh kernel: nothing passed here, only the kept files
        loaded = ex.kept(name)
        assert loaded.__code__.co_filename == str(path), capsys.readouterr().out  # not the kit's fallback
        assert check(loaded, *args) is True, capsys.readouterr().out
        capsys.readouterr()
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
    (ex.check_icl_prompt, "build_prompt",
     lambda d, q: "\n".join(f"example:{x}->{y}" for x, y in d) + f"\nexample:{q}->"),
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


def similarities(X):
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    return unit @ unit.T


def distances_inf_diagonal(X):
    dist = 1 - similarities(X)
    np.fill_diagonal(dist, np.inf)
    return dist


def loo_farthest(X, labels):
    sim = similarities(X)
    np.fill_diagonal(sim, np.inf)  # the smallest similarity taken for the nearest
    return float(np.mean(labels[sim.argmin(axis=1)] == labels))


def silhouette_counting_self(X, labels):
    dist = 1 - similarities(X)
    scores = []
    for i, own in enumerate(labels):
        mean_to = {t: dist[i, labels == t].mean() for t in np.unique(labels)}  # i among its own task
        a = mean_to.pop(own)
        scores.append((min(mean_to.values()) - a) / max(a, min(mean_to.values())))
    return float(np.mean(scores))


@pytest.mark.parametrize("checker, wrong, why", [
    (ex.check_cosine_distances, similarities, "cosine similarities"),
    (ex.check_cosine_distances, lambda X: 1 - X @ X.T, "skipped the normalisation"),
    (ex.check_cosine_distances, lambda X: np.linalg.norm(X[:, None] - X[None], axis=-1), "Euclidean"),
    (ex.check_cosine_distances, distances_inf_diagonal, "distance to itself should be 0"),
    (ex.check_knn_accuracy, loo_farthest, "farthest other vector"),
    (ex.check_silhouette, silhouette_counting_self, "counted i itself"),
    (ex.check_silhouette, lambda X, labels: solution("silhouette")(X, labels) * -1, "a(i) is the mean distance"),
], ids=lambda v: getattr(v, "__name__", ""))
def test_geometry_checkers_explain_common_mistakes(capsys, checker, wrong, why):
    ok, out = _verdict(capsys, checker, wrong)
    assert not ok and out.startswith("❌ Not quite:") and why in out, out


def test_geometry_steps_build_on_cosine_distances(capsys):
    """4.2 and 4.3 call the student's cosine_distances: with a stub there, the checkers say so; with the kit's
    (the tests' stand-in for a solved 4.1), the notebook's solutions pass, on toy and on other vectors."""
    X, labels = ex.example_vectors(seed=3)
    for name, checker in (("loo_1nn_accuracy", ex.check_knn_accuracy), ("silhouette", ex.check_silhouette)):
        code = next(c for *_, n, c in EXERCISES if n == name)
        assert "cosine_distances(X)" in code
        assert checker(solution(name), X, labels), capsys.readouterr().out
        unsolved = _solution(code, name)
        unsolved.__globals__["cosine_distances"] = stub_named("cosine_distances")
        ok, out = _verdict(capsys, checker, unsolved)
        assert not ok and "calls cosine_distances, which is still a stub" in out, out
    capsys.readouterr()


def stub_named(name):
    def step(*args):
        raise NotImplementedError  # YOUR CODE HERE

    step.__code__ = step.__code__.replace(co_name=name)  # the name `_call` reports
    step.__name__ = name
    return step


def one_based_rank(model, hidden, answer_ids):
    return solution("answer_rank")(model, hidden, answer_ids) + 1


def rank_counting_ties(model, hidden, answer_ids):
    logp = solution("project_to_vocab")(model, hidden)
    return (logp >= logp.gather(1, answer_ids[:, None])).sum(1) - 1  # right, except for tied answers


def rank_from_the_bottom(model, hidden, answer_ids):
    logp = solution("project_to_vocab")(model, hidden)
    return (logp < logp.gather(1, answer_ids[:, None])).sum(1)


def rank_without_norm(model, hidden, answer_ids):
    with torch.no_grad():
        logp = torch.log_softmax(model.unembed(hidden.to(model.dtype)).float(), dim=-1)
    return (logp > logp.gather(1, answer_ids[:, None])).sum(1)


def mean_rank_by_layer(model, theta, answer_ids):
    return torch.stack([solution("answer_rank")(model, theta[:, layer], answer_ids).float().mean()
                        for layer in range(theta.shape[1])])


def ranks_by_layer(model, theta, answer_ids):
    return torch.stack([solution("answer_rank")(model, theta[:, layer], answer_ids)
                        for layer in range(theta.shape[1])])


def test_vocab_steps_build_on_each_other(capsys, tiny_llama):
    """6.2 calls project_to_vocab and 6.3 answer_rank: a stub there is named by the checker."""
    for name, step, checker in (("answer_rank", "project_to_vocab", ex.check_answer_rank),
                                ("median_rank_by_layer", "answer_rank", ex.check_rank_by_layer)):
        code = next(c for *_, n, c in EXERCISES if n == name)
        assert f"{step}(model, " in code
        unsolved = _solution(code, name)
        unsolved.__globals__[step] = stub_named(step)
        ok, out = _verdict(capsys, checker, unsolved, tiny_llama)
        assert not ok and f"calls {step}, which is still a stub" in out, out


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


def theta_on_query_alone(model, demos_a, queries, theta_b, layer):
    from tv_utils.interventions import patched_logits
    from tv_utils.prompts import DEFAULT_FORMAT

    return patched_logits(model, model.encode([DEFAULT_FORMAT.query(q) for q in queries]), theta_b, layer)


def conflict_unpatched(model, demos_a, queries, theta_b, layer):
    from tv_utils.prompts import DEFAULT_FORMAT

    return unpatched(model, model.encode([DEFAULT_FORMAT.icl(d, q) for d, q in zip(demos_a, queries)]), None, None)


def conflict_first_theta_row(model, demos_a, queries, theta_b, layer):
    return solution("conflict_logits")(model, demos_a, queries, theta_b[0], layer)


def conflict_next_layer(model, demos_a, queries, theta_b, layer):
    return solution("conflict_logits")(model, demos_a, queries, theta_b, layer + 1)


def accuracy_swapped(model, episodes_a, episodes_b, answers_b, layer):
    on_a, on_b = solution("conflict_accuracy")(model, episodes_a, episodes_b, answers_b, layer)
    return on_b, on_a


def accuracy_first_theta(model, episodes_a, episodes_b, answers_b, layer):
    first = [episodes_b[0]] * len(episodes_b)
    return solution("conflict_accuracy")(model, episodes_a, first, answers_b, layer)


def accuracy_counts(model, episodes_a, episodes_b, answers_b, layer):
    return tuple(len(episodes_a) * x for x in solution("conflict_accuracy")(model, episodes_a, episodes_b,
                                                                           answers_b, layer))


def episodes_drawn_with_replacement(pairs, n, k, seed):
    from tv_utils.tasks import Episode

    rng = np.random.default_rng(seed)
    drawn = [[pairs[i] for i in rng.integers(len(pairs), size=k + 3)] for _ in range(n)]
    return [Episode(tuple(d[:k]), tuple(x for x, _ in d[k:k + 2]), d[-1]) for d in drawn]


def dummies_as_pairs(pairs, n, k, seed):
    return [replace(ep, dummies=tuple(p for p in ep.demos[:2])) for ep in solution("make_episodes")(pairs, n, k, seed)]


def global_random(pairs, n, k, seed):
    import random

    from tv_utils.tasks import Episode

    drawn = [random.sample(pairs, k + 3) for _ in range(n)]
    return [Episode(tuple(d[:k]), (d[k][0], d[k + 1][0]), d[-1]) for d in drawn]


def seed_ignored(pairs, n, k, seed):
    return solution("make_episodes")(pairs, n, k, 0)


def reseeded_per_episode(pairs, n, k, seed):
    return [solution("make_episodes")(pairs, 1, k, seed)[0] for _ in range(n)]


def shuffled_in_place(pairs, n, k, seed):
    import random

    random.Random(seed).shuffle(pairs)
    return solution("make_episodes")(pairs, n, k, seed)


def test_check_make_episodes_explains_common_mistakes(capsys):
    for wrong, why in [(episodes_drawn_with_replacement, "without replacement"),
                       (dummies_as_pairs, "a dummy is an input alone"),
                       (global_random, "the same seed gave other episodes"),
                       (seed_ignored, "seeds 0 and 1 gave the same episodes"),
                       (reseeded_per_episode, "different episodes among"),
                       (shuffled_in_place, "reordered or changed the list")]:
        ok, out = _verdict(capsys, ex.check_make_episodes, wrong)
        assert not ok and out.startswith("❌ Not quite:") and why in out, (wrong.__name__, out)
    assert ex.check_make_episodes(ex.KIT["make_episodes"]) and capsys.readouterr().out.startswith("✅ Correct:")


def theta_one_for_all(model, episodes, layer):
    return solution("own_theta")(model, episodes, layer).mean(0)


def theta_first_dummy(model, episodes, layer):
    return solution("own_theta")(model, [replace(ep, dummies=ep.dummies[:1]) for ep in episodes], layer)


def theta_next_layer(model, episodes, layer):
    return solution("own_theta")(model, episodes, layer + 1)


def theta_of_query_prompt(model, episodes, layer):
    return solution("own_theta")(model, [replace(ep, dummies=(ep.query[0],)) for ep in episodes], layer)


def sweep_with_inline_theta(model, pairs, layers, n, k, seed):
    return ex._own_sweep(model, ex.KIT["make_episodes"](pairs, n, k, seed), layers)  # right numbers, no own_theta


def sweep_next_seed(model, pairs, layers, n, k, seed):
    return ex.KIT["sweep_own_task"](model, pairs, layers, n, k, seed + 1)


def own_theta(model, episodes, layer):  # a notebook's own_theta that failed its check, found by the sweep below
    return theta_first_dummy(model, episodes, layer)


def sweep_with_wrong_own_theta(model, pairs, layers, n, k, seed):
    episodes = ex.KIT["make_episodes"](pairs, n, k, seed)
    thetas = [own_theta(model, episodes, layer) for layer in layers]
    return [0.0 if theta is None else 0.5 for theta in thetas]


def test_own_task_checkers_explain_common_mistakes(capsys, tiny_llama):
    for wrong, why in [(theta_one_for_all, "one vector for all episodes"),
                       (theta_first_dummy, "first dummy prompt only"),
                       (theta_next_layer, "you returned θ after layer"),
                       (theta_of_query_prompt, "real query prompt")]:
        ok, out = _verdict(capsys, ex.check_own_theta, wrong, tiny_llama)
        assert not ok and out.startswith("❌ Not quite:") and why in out, (wrong.__name__, out)
    for wrong, why in [(sweep_with_inline_theta, "did not call own_theta"),
                       (sweep_next_seed, "with other arguments"),
                       (sweep_with_wrong_own_theta, "make its check (exercise 7.2) pass first")]:
        ok, out = _verdict(capsys, ex.check_sweep_own_task, wrong, tiny_llama)
        assert not ok and out.startswith("❌ Not quite:") and why in out, (wrong.__name__, out)
    for name in ("make_episodes", "own_theta"):  # the spy put every step back where it found it
        assert ex.KIT[name].__module__ == "tv_utils.exercises" and not hasattr(ex.KIT[name], "__wrapped__")
    assert ex.check_sweep_own_task(ex.KIT["sweep_own_task"], tiny_llama), capsys.readouterr().out


def sweep_into_icl_prompts(model, pairs, layers, n, k, seed):
    from tv_utils.interventions import patched_logits
    from tv_utils.prompts import DEFAULT_FORMAT as F, answer_token_ids
    from tv_utils.protocol import accuracy

    episodes = ex.KIT["make_episodes"](pairs, n, k, seed)
    prompts = model.encode([F.icl(e.demos, e.query[0]) for e in episodes])
    target = torch.tensor([answer_token_ids(model.tokenizer, e.query[1])[0] for e in episodes])
    return [accuracy(model, patched_logits(model, prompts, ex.KIT["own_theta"](model, episodes, layer), layer)
                     .argmax(-1), target) for layer in layers]


@pytest.mark.parametrize("checker, wrong, why", [
    (ex.check_read_theta, read_first_row, "batch row 0"),
    (ex.check_read_theta, read_next_layer, "you returned the output of layer"),
    (ex.check_read_theta, read_row_zero_positions, "out[0] took batch row 0"),
    (ex.check_read_theta, read_without_save, "Did you forget .save()?"),
    (ex.check_mean_theta, first_dummy_only, "single dummy prompt"),
    (ex.check_conflict_logits, theta_on_query_alone, "query alone"),
    (ex.check_conflict_logits, conflict_unpatched, "plain ICL logits"),
    (ex.check_conflict_logits, conflict_first_theta_row, "first row of theta_b"),
    (ex.check_conflict_logits, conflict_next_layer, "written after layer"),
    (ex.check_conflict_accuracy, accuracy_swapped, "A first"),
    (ex.check_conflict_accuracy, accuracy_first_theta, "θ of B's first episode"),
    (ex.check_conflict_accuracy, accuracy_counts, "not counts"),
    (ex.check_own_theta, theta_of_query_prompt, "real query prompt"),
    (ex.check_sweep_own_task, sweep_into_icl_prompts, "write each query alone"),
    (ex.check_choose_layer, choose_on_test, "choose on dev"),
    (ex.check_answer_rank, one_based_rank, "start at 1"),
    (ex.check_answer_rank, rank_counting_ties, "ties with other tokens"),
    (ex.check_answer_rank, rank_from_the_bottom, "less likely than the answer"),
    (ex.check_answer_rank, rank_without_norm, "without the final norm"),
    (ex.check_rank_by_layer, mean_rank_by_layer, "mean rank"),
    (ex.check_rank_by_layer, ranks_by_layer, "one median per layer"),
], ids=lambda v: getattr(v, "__name__", ""))
def test_model_checkers_explain_common_mistakes(capsys, gemma, checker, wrong, why):
    """On the real model: a tiny random one answers alike whatever θ it gets, so some mistakes go unseen; its
    float32 log-probabilities hold ties, so the answer-rank tie rule is tested."""
    ok, out = _verdict(capsys, checker, wrong, gemma)
    assert not ok and out.startswith("❌ Not quite:") and why in out, out


def test_plain_checkers_catch_method_mistakes(capsys):
    X, labels = ex.example_vectors(seed=2)
    assert not ex.check_silhouette(euclidean_silhouette, X, labels)
    assert "Euclidean" in capsys.readouterr().out


def next_head(model, states, layer, head):
    return solution("head_contribution")(model, states, layer, (head + 1) % states.shape[1])


def flipped_effect(model, seqs, answers, layer, head, state):
    return -solution("indirect_effect")(model, seqs, answers, layer, head, state)


@pytest.fixture(scope="module")
def tiny_gemma(tokenizer):
    """A tiny random Gemma 3: its attention output goes through a post-attention norm before the residual add."""
    from transformers import Gemma3TextConfig

    from tv_utils.models import from_config

    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=8, sliding_window=6,
                              layer_types=["sliding_attention", "full_attention"] * 2, bos_token_id=1,
                              eos_token_id=2, pad_token_id=0)
    return from_config(config, tokenizer, name="tiny-gemma3")


def _per_layer_vector(model, mean_states, heads, combine):
    """Sum over the layers of `heads` of combine(norm, all head outputs of the layer, the chosen heads' outputs)."""
    from tv_utils.analyses import function_vectors as fv

    vector = 0
    with torch.no_grad():
        for layer in sorted({layer for layer, _ in heads}):
            outputs = [ex.KIT["head_contribution"](model, mean_states[layer][None], layer, h)[0]
                       for h in range(mean_states.shape[1])]
            chosen = [outputs[h] for at, h in heads if at == layer]
            vector = vector + combine(fv.post_attention_norm(model, layer), outputs, chosen)
    return vector


def fv_without_norm(model, mean_states, heads):
    return _per_layer_vector(model, mean_states, heads, lambda norm, outputs, chosen: sum(chosen))


def fv_norm_each_head(model, mean_states, heads):
    return _per_layer_vector(model, mean_states, heads, lambda norm, outputs, chosen: sum(norm(o) for o in chosen))


def fv_norm_chosen_only(model, mean_states, heads):
    return _per_layer_vector(model, mean_states, heads, lambda norm, outputs, chosen: norm(sum(chosen)))


def fv_every_head(model, mean_states, heads):
    return _per_layer_vector(model, mean_states, heads, lambda norm, outputs, chosen: norm(sum(outputs)))


def vector_replaces_state(model, seqs, vector, layer):
    from tv_utils import engine

    return engine.layer_sweep(model, seqs, vector.expand(model.n_layers, -1), [layer])[:, 0]


def test_function_vector_checkers_explain_common_mistakes(capsys, tiny_llama, tiny_gemma):
    ok, out = _verdict(capsys, ex.check_head_contribution, next_head, tiny_llama)
    assert not ok and "another head's share" in out, out
    ok, out = _verdict(capsys, ex.check_indirect_effect, flipped_effect, tiny_llama)
    assert not ok and "sign is flipped" in out, out
    for wrong, why in ((fv_without_norm, "before the post-attention norm"), (fv_norm_each_head, "each head's output"),
                       (fv_norm_chosen_only, "chosen heads' sum alone"), (fv_every_head, "every head of the chosen")):
        ok, out = _verdict(capsys, ex.check_function_vector, wrong, tiny_gemma)
        assert not ok and why in out, (wrong.__name__, out)
    ok, out = _verdict(capsys, ex.check_add_function_vector, vector_replaces_state, tiny_gemma)
    assert not ok and "replaced the state" in out, out


def test_function_vector_solution_goes_through_the_norm(capsys, tiny_gemma, tiny_llama):
    """The notebook's 8.3 solution, with the kit's 8.1, matches the kit on a model with a post-attention norm;
    without one, leaving the norm out is right."""
    from tv_utils.analyses import function_vectors as fv

    assert fv.post_attention_norm(tiny_gemma, 0) is not None and fv.post_attention_norm(tiny_llama, 0) is None
    assert ex.check_function_vector(solution("build_function_vector"), tiny_gemma)
    assert "through the post-attention norm" in capsys.readouterr().out
    assert ex.check_function_vector(fv_without_norm, tiny_llama)
    assert "has no post-attention norm" in capsys.readouterr().out
    assert ex.check_add_function_vector(solution("add_function_vector"), tiny_gemma)
    capsys.readouterr()


def test_function_vector_reports_a_stub_it_calls(capsys, tiny_llama):
    """8.3 calls the student's 8.1: while that is a stub, the check says so instead of "not attempted"."""
    code = next(code for *_, n, code in EXERCISES if n == "build_function_vector")
    build_function_vector = _solution(code, "build_function_vector")

    def head_contribution(model, states, layer, head):
        raise NotImplementedError  # YOUR CODE HERE

    build_function_vector.__globals__["head_contribution"] = head_contribution  # the notebook's 8.1, unsolved
    ok, out = _verdict(capsys, ex.check_function_vector, build_function_vector, tiny_llama)
    assert not ok and "calls head_contribution, which is still a stub" in out, out


def test_conflict_accuracy_is_the_conflict_analysis(tiny_llama):
    """The kit's 5.2 on `conflict_episodes` gives, at every layer, the accuracies of `conflict.conflict_hits`
    (the analysis behind Table 2) on the same episodes: the notebook's pipeline and the analysis agree."""
    from tv_utils.analyses import conflict

    a, b, n = "next_letter", "to_upper", 6
    episodes_a, episodes_b, answers_b = ex.conflict_episodes(tiny_llama, a, b, n)
    assert [ep.task for ep in episodes_b] == [b] * n and all(ep.query[0] in answers_b for ep in episodes_a)
    hits = conflict.conflict_hits(tiny_llama, [(a, b)], n=n, protocol=KIT, splits=("test",))
    patched = hits[hits.method == conflict.CONFLICT].groupby(["layer", "scored_on"]).hit.mean()
    for layer in range(tiny_llama.n_layers):
        on_a, on_b = ex.KIT["conflict_accuracy"](tiny_llama, episodes_a, episodes_b, answers_b, layer)
        assert (on_a, on_b) == pytest.approx((patched[(layer, "A")], patched[(layer, "B")])), layer


def test_conflict_accuracy_reports_a_stub_it_calls(capsys, tiny_llama):
    """5.2 calls the student's 5.1: while that is a stub, the check says so instead of "not attempted"."""
    code = next(code for *_, n, code in EXERCISES if n == "conflict_accuracy")
    conflict_accuracy = _solution(code, "conflict_accuracy")

    def conflict_logits(model, demos_a, queries, theta_b, layer):
        raise NotImplementedError  # YOUR CODE HERE

    conflict_accuracy.__globals__["conflict_logits"] = conflict_logits  # the notebook's 5.1, unsolved
    ok, out = _verdict(capsys, ex.check_conflict_accuracy, conflict_accuracy, tiny_llama)
    assert not ok and "calls conflict_logits, which is still a stub" in out, out


def test_checker_messages_are_plain_text():
    """The messages print as plain text: markdown emphasis would show its asterisks."""
    assert not re.search(r"\*\w[\w ]*\*", Path(ex.__file__).read_text(encoding="utf-8"))
