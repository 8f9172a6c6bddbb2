"""The geometry of task vectors: θ of many episodes clustered by task (t-SNE / UMAP, silhouette, kNN,
distance histograms, nearest tasks). Episodes under the kit's conventions (`protocol.KIT`) until this analysis
is re-run on the paper's (docs/protocol.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import store
from ..experiments import default_layer, prepare_split
from ..protocol import KIT, Protocol
from ..models import Model
from ..tasks import TASK_NAMES

__all__ = ["collect_task_vectors", "cosine_distances", "distance_table", "embed_2d", "embeddings", "geometry_scores",
           "knn_accuracy", "nearest_tasks", "run", "TaskVectors"]


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


def collect_task_vectors(model: Model, tasks=TASK_NAMES, n: int = KIT.n_test, protocol: Protocol = KIT,
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


def cosine_distances(x: np.ndarray) -> np.ndarray:
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
                     "silhouette": float(silhouette_score(cosine_distances(x), labels, metric="precomputed"))})
    return pd.DataFrame(rows)


def knn_accuracy(x: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out task identification: each vector's task guessed by a vote of its k nearest *other*
    vectors (cosine distance; the most common label, the nearest one's on a tie)."""
    labels = np.asarray(labels)
    dist = cosine_distances(np.asarray(x, dtype=np.float64))
    np.fill_diagonal(dist, np.inf)
    votes = labels[np.argsort(dist, axis=1, kind="stable")[:, :k]]
    predicted = [pd.Series(v).mode().iloc[0] if (v == v[0]).sum() < k else v[0] for v in votes]
    return float(np.mean(np.asarray(predicted) == labels))


def distance_table(tv: TaskVectors, layer: int) -> pd.DataFrame:
    """Every pairwise cosine distance, marked within-task or between-task (the paper's appendix histograms)."""
    dist = cosine_distances(tv.at(layer))
    i, j = np.triu_indices(len(dist), k=1)
    labels = tv.meta["task"].to_numpy()
    return pd.DataFrame({"distance": dist[i, j], "pair": np.where(labels[i] == labels[j], "within task",
                                                                  "between tasks")})


def nearest_tasks(tv: TaskVectors, layer: int, top: int = 10) -> pd.DataFrame:
    """Task pairs whose mean theta are closest (cosine distance between task centroids)."""
    names = list(dict.fromkeys(tv.meta["task"]))
    x = tv.at(layer)
    centroids = np.stack([x[(tv.meta["task"] == t).to_numpy()].mean(0) for t in names])
    dist = cosine_distances(centroids)
    i, j = np.triu_indices(len(names), k=1)
    df = pd.DataFrame({"task_a": np.array(names)[i], "task_b": np.array(names)[j], "distance": dist[i, j]})
    return df.sort_values("distance").head(top).reset_index(drop=True)


def run(model: Model, tasks=TASK_NAMES, n: int = KIT.n_test, layer: int | None = None,
        out_dir: str | Path | None = None, figures: bool = True) -> dict:
    """θ of n test episodes per task; embeddings and the stored vectors at L-4, L, L+4 (L: `layer`, else the
    best mean dev layer), scores at every layer, nearest tasks and distances at L. Writes
    geometry_<model>_{embeddings,scores,nearest,distances}.csv, _theta.safetensors (+ .csv) and, with
    `figures`, the t-SNE / UMAP scatters and the distance histogram; returns them all and L."""
    from .. import plots

    layer = default_layer(model, out_dir) if layer is None else model.check_layer(layer)
    tv = collect_task_vectors(model, tasks, n=n)
    layers = sorted({max(0, layer - 4), layer, min(model.n_layers - 1, layer + 4)})
    emb = embeddings(tv, layers)
    scores = geometry_scores(tv)
    nearest = nearest_tasks(tv, layer)
    stem = store.results_stem("geometry", model.name, out_dir)
    store.save_table(emb, f"{stem}_embeddings.csv")
    store.save_table(scores, f"{stem}_scores.csv")
    store.save_table(nearest, f"{stem}_nearest.csv")
    tv.save(f"{stem}_theta", layers)
    distances = distance_table(tv, layer)
    store.save_table(distances.groupby("pair")["distance"].describe().reset_index(), f"{stem}_distances.csv")
    if figures:
        for method in ("tsne", "umap"):
            store.save_figure(plots.geometry_scatter(emb, layer, method), f"{stem}_{method}")
        store.save_figure(plots.distance_histogram(distances), f"{stem}_distances")
    return {"layer": layer, "task_vectors": tv, "embeddings": emb, "scores": scores, "nearest": nearest,
            "distances": distances}
