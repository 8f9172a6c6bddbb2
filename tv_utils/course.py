"""The notebooks' set-up in one line, and the results they read.

Each loader returns the stored result of `python -m tv_utils <analysis>` for this model; for a model with no
stored results it runs a small live version of the same analysis (a few tasks, 10 episodes), so every
notebook works with any model. The tests run every live fallback once on a tiny model.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from . import exercises, store
from .analyses import beyond
from .analyses.conflict import PAPER_CONFLICTS, conflict_hits, conflicting_tasks
from .analyses.conflict import conflict_by_layer as conflict_by_layer_table
from .analyses.depth import best_depth
from .analyses.geometry import TaskVectors, collect_task_vectors, embeddings, geometry_scores, nearest_tasks
from .analyses.vocab import task_words as vocab_task_words
from .analyses.vocab import vocabulary_projection
from .experiments import QUICK_EPISODES, default_layer, quick_tasks, run_tasks
from .protocol import KIT, PAPER, Protocol
from .embedded import DEFAULT_MODEL
from .models import Model, load_model

__all__ = ["compare_models", "COMPARED", "conflict", "conflict_by_layer", "depth_tables", "function_vectors",
           "Functions", "functions", "geometry", "interpolation", "library", "QUICK", "reproduce_tables",
           "reuse_cost", "robustness", "scorecard", "setup", "stored_table", "task_words", "use", "vocab"]

QUICK = QUICK_EPISODES  # episodes per task in the live fallbacks


def setup(model_name: str = DEFAULT_MODEL, **load_kwargs) -> tuple[Model, int]:
    """Load the model and pick L, the layer with the best mean dev accuracy over the tasks (notebook 3);
    prints one line saying what was loaded and where L came from."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no progress widget while loading
    model = load_model(model_name, **load_kwargs)
    stored = _stored(model, "reproduce", "per_layer") is not None
    L = default_layer(model)
    source = "the stored reproduce run" if stored else f"a quick sweep of {', '.join(quick_tasks(model))}"
    print(f"{model.name}: {model.n_layers} layers, hidden size {model.hf.config.hidden_size}, {model.info['dtype']} on "
          f"{model.info['device']}; L = {L} (best mean dev layer in {source})")
    return model, L


_MINE = {"on": True}  # course.use: later cells run your functions (where their checks passed) or the kit's


def use(mine: bool = True) -> None:
    """Choose whose functions `functions` gives later cells: yours, once their checks passed (mine=True, the
    default), or the kit's (mine=False), e.g. to compare the two."""
    _MINE["on"] = bool(mine)
    print("later cells run " + ("your functions where their checks passed, the kit's otherwise" if mine
                                else "the kit's functions"))


class Functions:
    """The steps of the method by name (`fns.mean_theta(...)`), each resolved when called: yours or the kit's."""

    def __init__(self, names):
        unknown = [n for n in names if n not in exercises.KIT]
        if unknown:
            raise ValueError(f"no exercise step named {', '.join(unknown)}; steps: {', '.join(exercises.KIT)}")
        self.names = tuple(names)

    def __getattr__(self, name):
        if name not in self.__dict__.get("names", ()):
            raise AttributeError(f"{name} was not asked for: course.functions({', '.join(map(repr, self.names))})")
        return (_MINE["on"] and exercises.yours(name)) or exercises.KIT[name]

    def whose(self, name) -> str:
        """"yours" or "the kit's": who wrote the function this step runs now."""
        return "yours" if _MINE["on"] and exercises.yours(name) else "the kit's"

    def __repr__(self):
        return "\n".join(f"{name}: {self.whose(name)}" for name in self.names)


def functions(*names) -> Functions:
    """The steps `names` for later cells: yours once their checks passed (in this notebook or an earlier one),
    the kit's otherwise; `course.use(mine=False)` switches all of them to the kit's. Prints whose each is."""
    fns = Functions(names)
    print(repr(fns))
    return fns


def _stored(model: Model, kind: str, part: str | None = None):
    name = store.results_stem(kind, model.name).name + (f"_{part}" if part else "")
    return store.precomputed(name)


def reproduce_tables(model: Model):
    """(results, per_layer) of the reproduce run: per-task accuracies, and dev accuracy per task and layer."""
    results, per_layer = _stored(model, "reproduce", "results"), _stored(model, "reproduce", "per_layer")
    if results is None or per_layer is None:
        results, per_layer, *_ = run_tasks(model, quick_tasks(model, 3), Protocol(n_dev=QUICK, n_test=QUICK),
                                       progress=False)
    return results, per_layer


def depth_tables(model: Model, per_layer):
    """(per-layer curves, best layer per model) over the models of the depth run, else this model alone."""
    depth, best = store.precomputed("depth_per_layer"), store.precomputed("depth_best")
    if depth is None or best is None:
        depth, best = per_layer, best_depth(per_layer)
    return depth, best


def geometry(model: Model, L: int):
    """(task vectors, 2-D embeddings, clustering scores, nearest tasks) of the geometry run; the stored
    vectors keep layers L-4, L, L+4."""
    emb, scores, nearest = (_stored(model, "geometry", part) for part in ("embeddings", "scores", "nearest"))
    theta = store.stored_file(store.results_stem("geometry", model.name).name + "_theta.safetensors")
    if emb is not None and theta is not None:
        return TaskVectors.load(theta), emb, scores, nearest
    tv = collect_task_vectors(model, quick_tasks(model, 6), n=QUICK, progress=False)
    tv.saved_layers = sorted({max(0, L - 4), L, min(model.n_layers - 1, L + 4)})
    return tv, embeddings(tv, [L], methods=("tsne",)), geometry_scores(tv), nearest_tasks(tv, L)


def conflict(model: Model):
    """The conflicting-tasks table (paper Table 2): demonstrations of A, θ of B."""
    table = _stored(model, "conflict")
    if table is None:
        pairs = [p for p in PAPER_CONFLICTS if set(p) <= set(quick_tasks(model, 10, need=QUICK))]
        table = conflicting_tasks(model, pairs[:2] or PAPER_CONFLICTS[:1], n=QUICK)
    return table


def conflict_by_layer(model: Model):
    """Demonstrations of A with θ of B written at each layer: accuracy on A and B per pair and layer, with the
    paper's layer and the best override layer (the stored run, else two pairs live)."""
    table = _stored(model, "conflict", "by_layer")
    if table is None:
        pairs = [p for p in PAPER_CONFLICTS if set(p) <= set(quick_tasks(model, 10, need=QUICK))]
        hits = conflict_hits(model, pairs[:2] or PAPER_CONFLICTS[:1], n=QUICK)
        table = conflict_by_layer_table(hits)
    return table


def vocab(model: Model):
    """(top tokens of mean θ per task and layer, rank of the true answers per task and layer)."""
    top, ranks = _stored(model, "vocab", "top_tokens"), _stored(model, "vocab", "answer_rank")
    if top is None or ranks is None:
        top, ranks = vocabulary_projection(model, quick_tasks(model), n=5)
    return top, ranks


def task_words(model: Model):
    """The paper's vocabulary figure with its control (`vocab.task_words`: θ's top words at each task's best
    layer + 2, under the paper's protocol): the stored table, else the tasks of `reproduce_tables` live."""
    table = _stored(model, "vocab", "task_words")
    if table is None:
        results, _ = reproduce_tables(model)
        table = vocab_task_words(model, dict(zip(results.task, results.best_layer.astype(int))), PAPER, n=QUICK)
    return table


def interpolation(model: Model, L: int, task_a: str = "present_simple_past_simple",
                  task_b: str = "present_simple_gerund"):
    """Accuracy of α·θ(A) + (1-α)·θ(B) and of scaled θ, against A's and B's answers."""
    mix = _stored(model, "beyond", "interpolation")
    if mix is None:
        mix = beyond.interpolate(model, task_a, task_b, alphas=[0, 0.5, 1], scales=[0, 1, 2], layer=L, n=QUICK)
    return mix


def library(model: Model, L: int):
    """The stored task-vector library (mean θ per task at one layer), else one built from three tasks."""
    path = store.stored_file(store.results_stem("library", model.name).name + ".safetensors")
    if path is not None:
        return beyond.Library.load(path)
    return beyond.build_library(model, quick_tasks(model, 3), L, n=5)


def reuse_cost(model: Model, library: beyond.Library):
    """ICL against a stored θ on the same queries: prompt tokens, ms per query, accuracy."""
    cost = _stored(model, "beyond", "reuse_cost")
    if cost is None:
        cost = beyond.reuse_cost(model, library, list(library.vectors)[:2], n=QUICK)
    return cost


def robustness(model: Model, L: int):
    """Accuracy of θ averaged over more episodes, and of θ from shuffled demonstrations."""
    robust = _stored(model, "beyond", "robustness")
    if robust is None:
        robust = beyond.robustness(model, quick_tasks(model, 1)[0], L, n=QUICK, sizes=(1, 4))
    return robust


def function_vectors(model: Model):
    """(comparison, several-vectors table) of the function-vector run: task and function vectors side by side,
    heads' indirect effects, accuracy per layer and per head count; for a model with no stored run, a small
    live one on two tasks."""
    import json

    from .analyses import function_vectors as fv

    parts = {part: _stored(model, "function_vectors", part) for part in ("head_effects", "per_layer", "by_k",
                                                                         "several_vectors", "episodes")}
    table, heads = _stored(model, "function_vectors"), store.stored_file(
        store.results_stem("function_vectors", model.name).name + "_heads.json")
    if table is not None and heads is not None and all(p is not None for p in parts.values()):
        k = json.loads(heads.read_text())["k"]
        run = fv.Comparison(table, parts["head_effects"], parts["per_layer"], parts["by_k"], k,
                            fv.top_heads(parts["head_effects"], k), parts["episodes"])
        return run, parts["several_vectors"]
    tasks, protocol = quick_tasks(model, 2), replace(KIT, n_dev=QUICK, n_test=QUICK)  # as the stored run
    run = fv.compare_methods(model, tasks, ks=(2, 5), n_effect=5, protocol=protocol)
    return run, fv.several_vectors(model, tasks[:1], run.heads, n_effect=5, protocol=protocol)


def scorecard(model: Model):
    """(scorecard table, its printed verdict): this model's reproduce and conflict results (stored, else the
    quick live versions above) beside the paper's published numbers."""
    from . import scorecard as card

    results, _ = reproduce_tables(model)
    table = card.scorecard(results, conflict(model), episodes=_stored(model, "reproduce", "episodes"))
    return table, card.verdict_text(table)


def stored_table(model_name: str, kind: str, part: str = ""):
    """A stored table `<kind>_<model>[_<part>]` (your results folder first, then the committed reference), or a
    clear error if there is none."""
    table = store.precomputed(f"{kind}_{model_name}" + (f"_{part}" if part else ""))
    if table is None:
        raise ValueError(f"no stored {kind} results for {model_name}; "
                         f"`python -m tv_utils {kind} --model {model_name}` writes them")
    return table


COMPARED = ("gemma3-270m", "qwen2.5-coder-1.5b")  # the models whose full reference results are committed


def compare_models(what: str, models=COMPARED):
    """The stored tables of several models (by default the committed reference), read only (no model loads,
    no compute): "summary" (mean accuracies with 95% intervals, a block per model), "layers" (each task's best
    dev layer and tie set, the models side by side), "conflict" (accuracy on B with its interval @ the layer θ(B)
    was written at, under the paper's rule and at the best override layer, a block per model)."""
    import pandas as pd

    from .analyses.conflict import CONFLICT, OVERRIDE
    from .experiments import summarize

    if what not in ("summary", "layers", "conflict"):
        raise ValueError(f"unknown comparison {what!r}; valid: summary, layers, conflict")
    tables = {}
    for name in models:
        read = partial(stored_table, name)
        if what == "summary":
            s = summarize(read("reproduce", "results"), read("reproduce", "episodes")).set_index("category")
            tables[name] = pd.DataFrame({m: [f"{v:.2f} [{lo:.2f}, {hi:.2f}]" for v, lo, hi in
                                             zip(s[m], s[f"{m}_lo"], s[f"{m}_hi"])]
                                         for m in ("baseline", "icl", "tv", "tv_over_icl")}, index=s.index)
        elif what == "layers":
            r = read("reproduce", "results").set_index("task")
            tables[name] = pd.DataFrame({"best layer": r.best_layer, "depth": (r.best_layer / r.n_layers).round(2),
                                         "tie set": r.tie_layers, "span": r.tie_span})
        else:
            c = read("conflict")
            c = c[c.method.isin([CONFLICT, OVERRIDE])].assign(pair=lambda d: d.task_a + " → " + d.task_b)
            c["cell"] = [f"{v:.2f} [{lo:.2f}, {hi:.2f}] @{layer}" for v, lo, hi, layer in
                         zip(c.acc_b, c.acc_b_lo, c.acc_b_hi, c.layer)]
            tables[name] = c.pivot(index="pair", columns="method", values="cell")[[CONFLICT, OVERRIDE]].rename(
                columns={CONFLICT: "paper's rule", OVERRIDE: "best override layer"}).loc[c.pair.unique()]
    return pd.concat(tables, axis=1 if what == "layers" else 0)
