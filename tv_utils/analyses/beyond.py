"""Beyond the paper: interpolation and scaling of θ, a reusable task-vector library with what it saves over
ICL, and how robust θ is to where it comes from (averaged episodes, shuffled demonstrations). Episodes under the
kit's conventions (`protocol.KIT`) until this analysis is re-run on the paper's (docs/protocol.md)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import engine, store
from ..experiments import default_layer, prepare_split
from ..protocol import KIT, Protocol, accuracy, with_intervals
from ..models import Model
from ..prompts import DEFAULT_FORMAT, PromptFormat, answer_token_ids
from ..tasks import Episode, Task, get_task
from .conflict import shared_queries

__all__ = ["apply_library", "build_library", "interpolate", "Library", "patch_shared", "reuse_cost", "robustness",
           "run", "TASK_A", "TASK_B", "TASKS"]

TASKS = ("en_fr", "antonyms", "country_capital", "next_letter", "present_simple_past_simple")
TASK_A, TASK_B = "present_simple_past_simple", "present_simple_gerund"  # the interpolated pair


def patch_shared(model: Model, seqs, theta: torch.Tensor, layer: int) -> torch.Tensor:
    """Greedy next token of each prompt with one vector theta [H] written at `layer`."""
    full = torch.zeros(model.n_layers, theta.shape[-1], device=model.device)
    full[layer] = theta.to(model.device)
    return engine.layer_sweep(model, seqs, full, [layer])[:, 0]


# ---------------------------------------------------------------- arithmetic


def interpolate(model: Model, task_a: str, task_b: str, alphas=np.linspace(0, 1, 11), layer: int | None = None,
                n: int = KIT.n_test, scales=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0), protocol: Protocol = KIT,
                fmt: PromptFormat = DEFAULT_FORMAT) -> pd.DataFrame:
    """Patch alpha*theta_A + (1-alpha)*theta_B (mean thetas) into `x ->` and score against A and B;
    also scale*theta_A alone. alpha must lie in [0, 1]; layer: the model's L (`default_layer`) unless given."""
    layer = default_layer(model) if layer is None else model.check_layer(layer)
    alphas = [float(a) for a in alphas]
    bad = [a for a in alphas if not 0 <= a <= 1]
    if bad:
        raise ValueError(f"alpha must be in [0, 1], got {bad}")
    model.check_layer(layer)
    episodes = shared_queries(task_a, task_b, protocol, n)
    answers_b = dict(get_task(task_b).pairs)
    tok = model.tokenizer
    target_a = torch.tensor([answer_token_ids(tok, ep.query[1], fmt)[0] for ep in episodes])
    target_b = torch.tensor([answer_token_ids(tok, answers_b[ep.query[0]], fmt)[0] for ep in episodes])
    theta_a = prepare_split(model, task_a, "dev", n, protocol, fmt, icl=False).theta[:, layer].float().mean(0)
    theta_b = prepare_split(model, task_b, "dev", n, protocol, fmt, icl=False).theta[:, layer].float().mean(0)
    queries = model.encode([fmt.query(ep.query[0]) for ep in episodes])
    mixes = [("alpha", a, a * theta_a + (1 - a) * theta_b) for a in alphas]
    mixes += [("scale", s, s * theta_a) for s in scales]
    rows = []
    for kind, value, theta in mixes:
        pred = patch_shared(model, queries, theta, layer).cpu()
        rows.append({"model": model.name, "task_a": task_a, "task_b": task_b, "layer": layer, "kind": kind,
                     "value": value, "n": len(episodes), "acc_a": accuracy(model, pred, target_a),
                     "acc_b": accuracy(model, pred, target_b)})
    return with_intervals(pd.DataFrame(rows), ["acc_a", "acc_b"], "n")


# ---------------------------------------------------------------- a task-vector library


@dataclass
class Library:
    """Stored task vectors for one model and layer: reuse them on new queries without demonstrations."""

    model: str
    layer: int
    vectors: dict[str, torch.Tensor]
    meta: dict[str, dict] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """safetensors with one tensor per task, and a JSON sidecar with the metadata (both atomic)."""
        from safetensors.torch import save

        stem = store.stem_of(path, ".safetensors")
        path = store.suffixed(stem, ".safetensors")
        if not self.vectors:
            raise ValueError("the library is empty: add at least one task vector before saving")
        store.write_atomic(path, save({k: v.float().contiguous().cpu() for k, v in self.vectors.items()}))
        store.save_json({"model": self.model, "layer": self.layer, "tasks": self.meta}, store.suffixed(stem, ".json"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Library":
        from safetensors.torch import load_file

        stem = store.stem_of(path, ".safetensors")
        path = store.suffixed(stem, ".safetensors")
        meta = json.loads(store.suffixed(stem, ".json").read_text())
        vectors = load_file(path)
        if not vectors:
            raise ValueError(f"library {path} holds no task vectors")
        return cls(meta["model"], meta["layer"], vectors, meta["tasks"])

    def get(self, task: str) -> torch.Tensor:
        if task not in self.vectors:
            raise KeyError(f"task {task!r} is not in the library; it holds: {', '.join(self.vectors) or 'nothing'}")
        return self.vectors[task]


def build_library(model: Model, tasks, layer: int, n: int = 20, protocol: Protocol = KIT) -> Library:
    """Mean theta over n dev episodes per task, at one layer."""
    model.check_layer(layer)
    vectors, meta = {}, {}
    for task in tasks:
        s = prepare_split(model, task, "dev", n, protocol, icl=False)
        name = s.task.name
        vectors[name] = s.theta[:, layer].float().mean(0).cpu()
        meta[name] = {"layer": layer, "seed": protocol.seed, "n_episodes": n, "k": protocol.k}
    return Library(model.name, layer, vectors, meta)


def apply_library(model: Model, library: Library, task: str, inputs: list[str],
                  fmt: PromptFormat = DEFAULT_FORMAT) -> list[str]:
    """Answers to new inputs from `x ->` plus the stored theta: no demonstrations in the prompt."""
    if library.model != model.name:
        raise ValueError(f"library was built on {library.model!r}, not {model.name!r}")
    pred = patch_shared(model, model.encode([fmt.query(x) for x in inputs]), library.get(task), library.layer)
    return [model.decode_token(i).strip() for i in pred.tolist()]


def reuse_cost(model: Model, library: Library, tasks, n: int = KIT.n_test, protocol: Protocol = KIT,
               fmt: PromptFormat = DEFAULT_FORMAT) -> pd.DataFrame:
    """ICL vs stored-theta inference on the same test queries: prompt tokens, seconds per query, accuracy."""
    rows = []
    for task in tasks:
        s = prepare_split(model, task, "test", n, protocol, fmt, icl=False)
        name = s.task.name
        icl = model.encode([fmt.episode_icl(ep) for ep in s.episodes])
        start = time.perf_counter()
        icl_pred = engine.next_tokens(model, icl)
        icl_seconds = time.perf_counter() - start
        start = time.perf_counter()
        tv_pred = patch_shared(model, s.queries, library.get(name), library.layer)
        tv_seconds = time.perf_counter() - start
        for method, seqs, pred, seconds in (("ICL", icl, icl_pred, icl_seconds),
                                            ("stored theta", s.queries, tv_pred, tv_seconds)):
            rows.append({"model": model.name, "task": name, "method": method,
                         "prompt_tokens": float(np.mean([len(q) for q in seqs])),
                         "ms_per_query": 1000 * seconds / len(seqs), "n": len(seqs),
                         "accuracy": accuracy(model, pred, s.target)})
    return with_intervals(pd.DataFrame(rows), ["accuracy"], "n")


# ---------------------------------------------------------------- robustness


def robustness(model: Model, task: Task | str, layer: int, n: int = KIT.n_test, sizes=(1, 2, 4, 8),
               protocol: Protocol = KIT, fmt: PromptFormat = DEFAULT_FORMAT, seed: int = 0) -> pd.DataFrame:
    """Accuracy of theta averaged over 1, 2, 4, 8 episodes, and of theta from shuffled demonstrations."""
    model.check_layer(layer)
    rng = np.random.default_rng(seed)
    pool = prepare_split(model, task, "dev", n, protocol, fmt, icl=False)
    test = prepare_split(model, task, "test", n, protocol, fmt, icl=False)
    name = pool.task.name
    rows = []
    for size in sizes:
        picks = torch.as_tensor(rng.integers(0, len(pool.episodes), size=(len(test.episodes), size)))
        theta = pool.theta[picks, layer].float().mean(1)
        full = torch.zeros(len(theta), model.n_layers, theta.shape[-1])
        full[:, layer] = theta
        pred = engine.layer_sweep(model, test.queries, full.to(model.device), [layer])[:, 0]
        condition = "θ from 1 other episode" if size == 1 else f"mean θ of {size} other episodes"
        rows.append({"model": model.name, "task": name, "layer": layer, "condition": condition,
                     "n": len(test.target), "accuracy": accuracy(model, pred, test.target)})
    shuffled = [_shuffled(ep, rng) for ep in test.episodes]
    theta, _ = engine.episode_states(model, shuffled, fmt)
    pred = engine.layer_sweep(model, test.queries, theta, [layer])[:, 0]
    rows.append({"model": model.name, "task": name, "layer": layer, "condition": "demos with shuffled answers",
                 "n": len(test.target), "accuracy": accuracy(model, pred, test.target)})
    pred = engine.layer_sweep(model, test.queries, test.theta, [layer])[:, 0]
    rows.append({"model": model.name, "task": name, "layer": layer, "condition": "own episode (paper)",
                 "n": len(test.target), "accuracy": accuracy(model, pred, test.target)})
    return with_intervals(pd.DataFrame(rows), ["accuracy"], "n")


def _shuffled(ep: Episode, rng) -> Episode:
    """The same demonstrations with their answers permuted (x_i -> y_pi(i)), so the mapping is broken."""
    outputs = [y for _, y in ep.demos]
    order = np.roll(np.arange(len(outputs)), 1 + rng.integers(len(outputs) - 1))
    demos = tuple((x, outputs[j]) for (x, _), j in zip(ep.demos, order))
    return replace(ep, demos=demos)


def run(model: Model, tasks=TASKS, task_a: str = TASK_A, task_b: str = TASK_B, n: int = KIT.n_test,
        layer: int | None = None, out_dir: str | Path | None = None, figures: bool = True) -> dict:
    """All three at L (`layer`, else the best mean dev layer): `interpolate` of task_a and task_b, a library
    of `tasks` with its `reuse_cost`, and `robustness` per task. Writes beyond_<model>_{interpolation,
    reuse_cost,robustness}.csv, library_<model>.{safetensors,json} and, with `figures`, their charts;
    returns them all and L."""
    from .. import plots

    layer = default_layer(model, out_dir) if layer is None else model.check_layer(layer)
    stem = store.results_stem("beyond", model.name, out_dir)
    mix = interpolate(model, task_a, task_b, layer=layer, n=n)
    store.save_table(mix, f"{stem}_interpolation.csv")
    library = build_library(model, tasks, layer, n=n)
    library.save(store.results_stem("library", model.name, out_dir))
    cost = reuse_cost(model, library, tasks, n=n)
    store.save_table(cost, f"{stem}_reuse_cost.csv")
    robust = pd.concat([robustness(model, t, layer, n=n) for t in tasks], ignore_index=True)
    store.save_table(robust, f"{stem}_robustness.csv")
    if figures:
        store.save_figure(plots.interpolation_curves(mix), f"{stem}_interpolation")
        store.save_figure(plots.method_bars(cost, "task", "accuracy", "method", "ICL vs stored θ: accuracy"),
                          f"{stem}_reuse_accuracy")
        store.save_figure(plots.method_bars(robust, "task", "accuracy", "condition", "Where θ comes from"),
                          f"{stem}_robustness")
    return {"layer": layer, "interpolation": mix, "library": library, "reuse_cost": cost, "robustness": robust}
