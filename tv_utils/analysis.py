"""The paper's analyses and a few beyond it, each returning a tidy DataFrame (figures live in `plots`).

- ICL and your own task: one ICL example with its accuracy; θ from pairs you type
- depth: best layer across models, on relative depth
- geometry: theta clusters by task (t-SNE / UMAP, silhouette, kNN, distance histograms)
- conflicting tasks: demonstrations of A, theta of B (paper Table 2)
- vocabulary projection: theta through the final norm and unembedding (paper Table 3)
- beyond: interpolation / scaling of theta, a reusable task-vector library with its cost, robustness
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import engine, store
from .experiments import (PAPER, Protocol, accuracy, best_mean_layer, best_of, encode_queries, prepare_split,
                          sample_split)
from .models import Model
from .prompts import DEFAULT_FORMAT, PromptFormat, answer_token_ids, usable_task
from .tasks import TASK_NAMES, Episode, Task, get_task, make_task

# ---------------------------------------------------------------- ICL and your own task


def icl_example(model, task, k: int = 5, n: int = 10) -> dict:
    """One ICL prompt of `task` with k demonstrations, the model's answer to it, and ICL vs zero-shot accuracy
    over n test episodes (what the ICL playground shows)."""
    _, episodes, target = sample_split(model, task, "test", n, Protocol(k=k), DEFAULT_FORMAT)
    icl = engine.next_tokens(model, model.encode([DEFAULT_FORMAT.episode_icl(ep) for ep in episodes]))
    base = engine.next_tokens(model, encode_queries(model, episodes, DEFAULT_FORMAT))  # no θ needed here
    ep = episodes[0]
    return {"prompt": DEFAULT_FORMAT.episode_icl(ep), "answer": model.decode_token(icl[0]),
            "expected": ep.query[1], "icl_accuracy": accuracy(model, icl, target),
            "zero_shot_accuracy": accuracy(model, base, target), "n": n}


def own_task_answers(model, pairs, queries, layer: int) -> tuple[pd.DataFrame, dict]:
    """Your own task: theta from `input -> output` pairs (text or a list of tuples), then each query answered
    zero-shot, with ICL, and with `x ->` + theta at `layer`. The last 2 pairs' inputs serve as the dummy
    queries x' (as in the paper, x' is not among the demonstrations); the other pairs are the demonstrations.

    Returns (table with one row per query, {"demos": ..., "dummies": ...}).
    """
    from .tasks import parse_pairs

    task = make_task("custom", parse_pairs(pairs) if isinstance(pairs, str) else pairs)
    if len(task.pairs) < 3:
        raise ValueError(f"give at least 3 pairs (demonstrations plus 2 dummy queries), got {len(task.pairs)}")
    queries = [q.strip() for q in (queries.split(",") if isinstance(queries, str) else queries) if q.strip()]
    if not queries:
        raise ValueError("type at least one query, separated by commas")
    model.check_layer(layer)
    demos, dummies = task.pairs[:-2], tuple(x for x, _ in task.pairs[-2:])
    spaced = usable_task(task, model.tokenizer)[0].spaced  # numbers on Gemma go without the space
    theta, _ = engine.episode_states(model, [Episode(demos, dummies, (dummies[0], ""), spaced=spaced)], icl=False)
    query_ids = model.encode([DEFAULT_FORMAT.query(q) for q in queries])
    tv = patch_shared(model, query_ids, theta[0, layer], layer)
    icl = engine.next_tokens(model, model.encode([DEFAULT_FORMAT.icl(demos, q, spaced) for q in queries]))
    zero = engine.next_tokens(model, query_ids)
    table = pd.DataFrame({"query": queries,
                          "zero-shot": [model.decode_token(i) for i in zero.tolist()],
                          "ICL": [model.decode_token(i) for i in icl.tolist()],
                          f"task vector (layer {layer})": [model.decode_token(i) for i in tv.tolist()]})
    return table, {"demos": demos, "dummies": dummies}


# ---------------------------------------------------------------- depth across models


def layer_accuracy(model: Model, task, n: int = 50, protocol: Protocol = PAPER, split: str = "dev") -> pd.DataFrame:
    """Task-vector accuracy at every layer on one split (the dev half of `evaluate_task`)."""
    s = prepare_split(model, task, split, n, protocol, icl=False)
    acc = accuracy(model, engine.layer_sweep(model, s.queries, s.theta), s.target[:, None], dim=0)
    layers = list(range(model.n_layers))
    return pd.DataFrame({"model": model.name, "task": s.task.name, "category": s.task.category, "layer": layers,
                         "rel_depth": [l / model.n_layers for l in layers], "dev_acc": acc})


def best_depth(per_layer: pd.DataFrame) -> pd.DataFrame:
    """Per model: the layer with the best mean accuracy over tasks, and its relative depth (the sweep
    covers every layer, so the layer count is the last layer + 1)."""
    rows = []
    for model, df in per_layer.groupby("model", sort=False):
        layer = best_mean_layer(df)
        n_layers = int(df["layer"].max() + 1)
        rows.append({"model": model, "best_layer": layer, "n_layers": n_layers, "best_rel_depth": layer / n_layers,
                     "best_mean_acc": float(df.groupby("layer")["dev_acc"].mean().max())})
    return pd.DataFrame(rows)


QUICK_EPISODES = 10  # per task, in the quick live runs for a model with no stored results


def quick_tasks(model: Model, n: int = 4, need: int = 2 * QUICK_EPISODES) -> list[str]:
    """Up to n tasks for live fallbacks, one per category first, that this tokenizer can score on `need` pairs."""
    preferred = ("en_fr", "antonyms", "country_capital", "list_first", "next_letter", "to_upper", "list_last",
                 "en_es", "present_simple_past_simple", "location_continent")
    usable = [t for t in preferred if len(usable_task(get_task(t), model.tokenizer)[0].pairs) >= need]
    if not usable:
        raise ValueError(f"{model.name}'s tokenizer scores none of the tasks {', '.join(preferred)} on single "
                         f"answer tokens; run the analyses with tasks it can score")
    return usable[:n]


def per_layer_accuracy(model: Model, folder: str | Path | None = None, n: int = QUICK_EPISODES) -> pd.DataFrame:
    """Dev accuracy per task and layer: this model's stored reproduce run, else a quick live sweep of
    `quick_tasks` on n episodes each (for a model with no stored results)."""
    per_layer = store.precomputed(store.results_stem("reproduce", model.name, folder).name + "_per_layer", folder)
    if per_layer is None:
        per_layer = pd.concat([layer_accuracy(model, t, n=n) for t in quick_tasks(model)], ignore_index=True)
    return per_layer


def default_layer(model: Model, folder: str | Path | None = None) -> int:
    """L: the layer with the best mean dev accuracy (`per_layer_accuracy`), used when no layer is given."""
    return best_mean_layer(per_layer_accuracy(model, folder))


# ---------------------------------------------------------------- geometry


@dataclass
class TaskVectors:
    """theta at every layer for many episodes of many tasks, with a tidy description of each row."""

    model: str
    theta: torch.Tensor  # [n, n_layers, hidden], float32 on CPU
    meta: pd.DataFrame  # task, category, episode, demos

    def at(self, layer: int) -> np.ndarray:
        return self.theta[:, layer].numpy()

    def save(self, path: str | Path, layers) -> Path:
        """theta at the given layers (float16 safetensors) and the row table (CSV) beside it."""
        from safetensors.torch import save

        stem = store.stem_of(path, ".safetensors")
        path = store.suffixed(stem, ".safetensors")
        tensors = {f"layer_{l}": self.theta[:, l].half().contiguous() for l in layers}
        store.write_atomic(path, save(tensors, metadata={"model": self.model}))
        store.save_table(self.meta, store.suffixed(stem, ".csv"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TaskVectors":
        """Saved task vectors; layers that were not saved are zeros (see `saved_layers`)."""
        from safetensors import safe_open

        stem = store.stem_of(path, ".safetensors")
        path = store.suffixed(stem, ".safetensors")
        with safe_open(path, "pt") as f:
            names = list(f.keys())
            model = f.metadata()["model"]
            layers = {int(k.split("_")[1]): f.get_tensor(k).float() for k in names}
        n, hidden = next(iter(layers.values())).shape
        theta = torch.zeros(n, max(layers) + 1, hidden)
        for l, t in layers.items():
            theta[:, l] = t
        tv = cls(model, theta, pd.read_csv(store.suffixed(stem, ".csv")))
        tv.saved_layers = sorted(layers)
        return tv


def collect_task_vectors(model: Model, tasks=TASK_NAMES, n: int = 50, protocol: Protocol = PAPER,
                         progress: bool = True) -> TaskVectors:
    from tqdm.auto import tqdm

    thetas, rows = [], []
    for name in tqdm(list(tasks), desc="task vectors", disable=not progress):
        s = prepare_split(model, name, "test", n, protocol, icl=False)
        thetas.append(s.theta.float().cpu())
        for i, ep in enumerate(s.episodes):
            rows.append({"task": s.task.name, "category": s.task.category, "episode": i,
                         "demos": "; ".join(f"{x}→{y}" for x, y in ep.demos)})
    return TaskVectors(model.name, torch.cat(thetas), pd.DataFrame(rows))


def _cosine_distances(x: np.ndarray) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.clip(1 - unit @ unit.T, 0, 2)


def embed_2d(x: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D embedding of rows (cosine geometry): t-SNE or UMAP."""
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(x) - 1) / 3)
        return TSNE(2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_jobs=1).fit_transform(x)
    raise ValueError(f"unknown method {method!r}; valid methods: tsne, umap")


def embeddings(tv: TaskVectors, layers, methods=("tsne", "umap"), seed: int = 0) -> pd.DataFrame:
    """Tidy 2-D coordinates for each (layer, method): the data behind the geometry widget."""
    frames = []
    for layer in layers:
        for method in methods:
            xy = embed_2d(tv.at(layer), method, seed)
            frames.append(tv.meta.assign(layer=layer, method=method, x=xy[:, 0], y=xy[:, 1]))
    return pd.concat(frames, ignore_index=True)


def geometry_scores(tv: TaskVectors, layers=None, k: int = 5) -> pd.DataFrame:
    """Silhouette (cosine) and leave-one-out kNN task-identification accuracy per layer."""
    from sklearn.metrics import silhouette_score

    labels = tv.meta["task"].to_numpy()
    rows = []
    for layer in range(tv.theta.shape[1]) if layers is None else layers:
        x = tv.at(layer)
        rows.append({"model": tv.model, "layer": layer, "knn_accuracy": knn_accuracy(x, labels, k),
                     "silhouette": float(silhouette_score(_cosine_distances(x), labels, metric="precomputed"))})
    return pd.DataFrame(rows)


def knn_accuracy(x: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out task identification: each vector's task guessed by a vote of its k nearest *other*
    vectors (cosine distance; the most common label, the nearest one's on a tie)."""
    labels = np.asarray(labels)
    dist = _cosine_distances(np.asarray(x, dtype=np.float64))
    np.fill_diagonal(dist, np.inf)
    votes = labels[np.argsort(dist, axis=1, kind="stable")[:, :k]]
    predicted = [pd.Series(v).mode().iloc[0] if (v == v[0]).sum() < k else v[0] for v in votes]
    return float(np.mean(np.asarray(predicted) == labels))


def distance_table(tv: TaskVectors, layer: int) -> pd.DataFrame:
    """Every pairwise cosine distance, marked within-task or between-task (the paper's appendix histograms)."""
    dist = _cosine_distances(tv.at(layer))
    i, j = np.triu_indices(len(dist), k=1)
    labels = tv.meta["task"].to_numpy()
    return pd.DataFrame({"distance": dist[i, j], "pair": np.where(labels[i] == labels[j], "within task",
                                                                  "between tasks")})


def nearest_tasks(tv: TaskVectors, layer: int, top: int = 10) -> pd.DataFrame:
    """Task pairs whose mean theta are closest (cosine distance between task centroids)."""
    names = list(dict.fromkeys(tv.meta["task"]))
    x = tv.at(layer)
    centroids = np.stack([x[(tv.meta["task"] == t).to_numpy()].mean(0) for t in names])
    dist = _cosine_distances(centroids)
    i, j = np.triu_indices(len(names), k=1)
    df = pd.DataFrame({"task_a": np.array(names)[i], "task_b": np.array(names)[j], "distance": dist[i, j]})
    return df.sort_values("distance").head(top).reset_index(drop=True)


# ---------------------------------------------------------------- conflicting tasks

PAPER_CONFLICTS = (
    ("next_letter", "to_upper"),
    ("list_last", "list_first"),
    ("prev_letter", "next_letter"),
    ("present_simple_past_simple", "present_simple_gerund"),
    ("en_es", "en_fr"),
)


def shared_queries(a: str, b: str, protocol: Protocol, n: int) -> list[Episode]:
    """Episodes of task A whose query input also has an answer under task B (so both can be scored)."""
    task_a, task_b = get_task(a), get_task(b)
    b_answers = dict(task_b.pairs)
    shared = [(x, y) for x, y in task_a.pairs if x in b_answers]
    if len(shared) < protocol.k + protocol.n_dummies + 1:
        raise ValueError(f"tasks {a!r} and {b!r} share only {len(shared)} inputs; pick tasks over the same inputs, "
                         f"e.g. {', '.join(f'{p}/{q}' for p, q in PAPER_CONFLICTS)}")
    from .tasks import sample_episodes

    return sample_episodes(make_task(a, shared, task_a.category), n, protocol.k, protocol.n_dummies, "test",
                           protocol.seed)


def conflict_partners(task_a: str, min_shared: int = 8) -> list[str]:
    """Tasks that share at least `min_shared` inputs with task_a (so demos of A can be scored on B's answers)."""
    from .tasks import TASK_NAMES, get_task

    inputs = {x for x, _ in get_task(task_a).pairs}
    return [b for b in TASK_NAMES if b != task_a and len(inputs & {x for x, _ in get_task(b).pairs}) >= min_shared]


def followed_task(table: pd.DataFrame, task_a: str, task_b: str) -> str:
    """The task whose answers the model gives with θ(B) patched over demonstrations of A (the higher accuracy
    in the "ICL + theta of B" row; A on a tie)."""
    row = table[(table.task_a == task_a) & (table.task_b == task_b) & (table.method == "ICL + theta of B")].iloc[0]
    return task_b if row.acc_b > row.acc_a else task_a


def conflicting_tasks(model: Model, pairs=PAPER_CONFLICTS, n: int = 50, layer: int | None = None,
                      protocol: Protocol = PAPER, fmt: PromptFormat = DEFAULT_FORMAT) -> pd.DataFrame:
    """Demonstrations of A with theta(B) patched in: accuracy on A's and B's answers (paper Table 2).

    theta(B) comes from episodes of B; the layer is B's best dev layer unless given.
    """
    rows = []
    for a, b in pairs:
        for name in (a, b):
            if name not in TASK_NAMES:
                raise KeyError(f"unknown task {name!r} in pair ({a}, {b}); valid tasks: {', '.join(TASK_NAMES)}")
        episodes = shared_queries(a, b, protocol, n)
        answers_b = dict(get_task(b).pairs)
        tok = model.tokenizer
        target_a = torch.tensor([answer_token_ids(tok, ep.query[1], fmt)[0] for ep in episodes])
        target_b = torch.tensor([answer_token_ids(tok, answers_b[ep.query[0]], fmt)[0] for ep in episodes])
        b_split = prepare_split(model, b, "dev", n, protocol, fmt, icl=False)
        if layer is None:
            acc = accuracy(model, engine.layer_sweep(model, b_split.queries, b_split.theta), b_split.target[:, None], 0)
            use_layer = best_of(list(range(model.n_layers)), acc)
        else:
            use_layer = model.check_layer(layer)
        icl = model.encode([fmt.episode_icl(ep) for ep in episodes])
        regular = engine.next_tokens(model, icl).cpu()
        conflict = engine.layer_sweep(model, icl, b_split.theta, [use_layer])[:, 0].cpu()
        for method, pred in (("ICL (demos of A)", regular), ("ICL + theta of B", conflict)):
            rows.append({"model": model.name, "task_a": a, "task_b": b, "method": method, "layer": use_layer,
                         "acc_a": accuracy(model, pred, target_a),
                         "acc_b": accuracy(model, pred, target_b)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- vocabulary projection


def _is_word(token: str) -> bool:
    t = token.strip()
    return len(t) >= 2 and t.replace("-", "").isalpha()


@torch.no_grad()
def project(model: Model, vectors: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over the vocabulary of hidden states [N, H] read through final norm + unembedding."""
    h = model.final_norm(vectors.to(model.device, model.dtype))
    return torch.log_softmax(model.unembed(h).float(), dim=-1).cpu()


def answer_rank(logp: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Rank of each row's answer token among the vocabulary (0 = the top token; ties count in its favour)."""
    return (logp > logp.gather(1, answer_ids[:, None])).sum(1)


def top_tokens(model: Model, theta: torch.Tensor, k: int = 10, pool: int = 200) -> list[list[tuple[str, float]]]:
    """Top word-like tokens per vector (deduplicated on stripped lower-case text) with their probability."""
    out = []
    for logp in project(model, theta):
        values, ids = logp.topk(min(pool, logp.numel()))
        seen, tokens = set(), []
        for v, i in zip(values.tolist(), ids.tolist()):
            text = model.decode_token(i)
            key = text.strip().lower()
            if _is_word(text) and key not in seen:
                seen.add(key)
                tokens.append((text.strip(), float(np.exp(v))))
            if len(tokens) == k:
                break
        out.append(tokens)
    return out


def vocabulary_projection(model: Model, tasks=TASK_NAMES, layers=None, n: int = 20, k: int = 10, pool: int = 60,
                          protocol: Protocol = PAPER) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top tokens of the mean theta per task and layer, rank of the true answers per task and layer).

    Every task's theta shares a large common component, so its raw top tokens start with the same few
    tokens for every task. `specific=True` rows drop tokens that rank high for more than a quarter of
    the tasks at that layer, which leaves the task-related ones. The rank table is a logit lens on
    theta: where the episode's own answer token ranks (0 = top).
    """
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    candidates, rank_rows = [], []
    for task in tasks:
        s = prepare_split(model, task, "test", n, protocol, icl=False)
        name = s.task.name
        mean = s.theta.float().mean(0)  # [n_layers, H]
        for layer, tokens in zip(layers, top_tokens(model, mean[layers], pool)):
            for token, prob in tokens:
                candidates.append({"model": model.name, "task": name, "layer": layer, "token": token, "prob": prob})
        for layer in layers:
            logp = project(model, s.theta[:, layer].float())
            target_logp = logp.gather(1, s.target.cpu()[:, None])
            ranks = answer_rank(logp, s.target.cpu()).float()
            rank_rows.append({"model": model.name, "task": name, "layer": layer,
                              "median_rank": ranks.median().item(), "top1": (ranks == 0).float().mean().item(),
                              "mean_prob": target_logp.exp().mean().item()})
    cand = pd.DataFrame(candidates, columns=["model", "task", "layer", "token", "prob"])
    shared = cand.groupby(["layer", "token"])["task"].transform("nunique")
    cand["shared_by"] = shared
    limit = max(2, len(list(tasks)) // 4)
    frames = []
    for specific, part in (("raw", cand), ("specific", cand[shared <= limit])):
        part = part.groupby(["task", "layer"], sort=False).head(k).copy()
        part["rank"] = part.groupby(["task", "layer"], sort=False).cumcount()
        part["specific"] = specific == "specific"
        frames.append(part)
    top = pd.concat(frames, ignore_index=True)[["model", "task", "layer", "specific", "rank", "token", "prob",
                                                 "shared_by"]]
    return top, pd.DataFrame(rank_rows)


# ---------------------------------------------------------------- beyond the paper: arithmetic


def interpolate(model: Model, task_a: str, task_b: str, alphas=np.linspace(0, 1, 11), layer: int = 9,
                n: int = 50, scales=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0), protocol: Protocol = PAPER,
                fmt: PromptFormat = DEFAULT_FORMAT) -> pd.DataFrame:
    """Patch alpha*theta_A + (1-alpha)*theta_B (mean thetas) into `x ->` and score against A and B;
    also scale*theta_A alone. alpha must lie in [0, 1]."""
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
                     "value": value, "acc_a": accuracy(model, pred, target_a),
                     "acc_b": accuracy(model, pred, target_b)})
    return pd.DataFrame(rows)


def patch_shared(model: Model, seqs, theta: torch.Tensor, layer: int) -> torch.Tensor:
    """Greedy next token of each prompt with one vector theta [H] written at `layer`."""
    full = torch.zeros(model.n_layers, theta.shape[-1], device=model.device)
    full[layer] = theta.to(model.device)
    return engine.layer_sweep(model, seqs, full, [layer])[:, 0]


# ---------------------------------------------------------------- beyond the paper: a task-vector library


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


def build_library(model: Model, tasks, layer: int, n: int = 20, protocol: Protocol = PAPER) -> Library:
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


def reuse_cost(model: Model, library: Library, tasks, n: int = 50, protocol: Protocol = PAPER,
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
                         "ms_per_query": 1000 * seconds / len(seqs),
                         "accuracy": accuracy(model, pred, s.target)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- beyond the paper: robustness


def robustness(model: Model, task: Task | str, layer: int, n: int = 50, sizes=(1, 2, 4, 8), protocol: Protocol = PAPER,
               fmt: PromptFormat = DEFAULT_FORMAT, seed: int = 0) -> pd.DataFrame:
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
                     "accuracy": accuracy(model, pred, test.target)})
    shuffled = [_shuffled(ep, rng) for ep in test.episodes]
    theta, _ = engine.episode_states(model, shuffled, fmt)
    pred = engine.layer_sweep(model, test.queries, theta, [layer])[:, 0]
    rows.append({"model": model.name, "task": name, "layer": layer, "condition": "demos with shuffled answers",
                 "accuracy": accuracy(model, pred, test.target)})
    pred = engine.layer_sweep(model, test.queries, test.theta, [layer])[:, 0]
    rows.append({"model": model.name, "task": name, "layer": layer, "condition": "own episode (paper)",
                 "accuracy": accuracy(model, pred, test.target)})
    return pd.DataFrame(rows)


def _shuffled(ep: Episode, rng) -> Episode:
    """The same demonstrations with their answers permuted (x_i -> y_pi(i)), so the mapping is broken."""
    outputs = [y for _, y in ep.demos]
    order = np.roll(np.arange(len(outputs)), 1 + rng.integers(len(outputs) - 1))
    demos = tuple((x, outputs[j]) for (x, _), j in zip(ep.demos, order))
    return replace(ep, demos=demos)
