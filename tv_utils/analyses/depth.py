"""Depth across models: the task vector's best layer in several models, on relative depth (layer / layers); the kit's
conventions (`protocol.KIT`), as when it was run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import store
from ..experiments import layer_accuracy
from ..protocol import KIT, best_mean_layer

__all__ = ["best_depth", "MODELS", "run", "TASKS"]

MODELS = ("gemma3-270m", "smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
TASKS = ("en_fr", "antonyms", "country_capital", "list_first", "present_simple_gerund", "location_continent")


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


def run(models=MODELS, tasks=TASKS, n: int = 30, out_dir: str | Path | None = None, figures: bool = True,
        device: str | None = None, dtype: str | None = None) -> dict:
    """Each model loaded in turn and swept at every layer on n dev episodes per task; writes
    depth_per_layer.csv, depth_best.csv and, with `figures`, the curves on relative depth; returns
    {"per_layer": ..., "best": ...}."""
    from tqdm.auto import tqdm

    from .. import plots
    from ..models import load_model

    curves = []
    for name in models:
        model = load_model(name, device=device, dtype=dtype)
        for task in tqdm(tasks, desc=name):
            curves.append(layer_accuracy(model, task, n=n, protocol=KIT))
        del model
    per_layer = pd.concat(curves, ignore_index=True)
    best = best_depth(per_layer)
    stem = store.results_folder(out_dir) / "depth"
    store.save_table(per_layer, f"{stem}_per_layer.csv")
    store.save_table(best, f"{stem}_best.csv")
    if figures:
        store.save_figure(plots.layer_curves(per_layer, relative=True, title="Task-vector accuracy by relative depth"),
                          f"{stem}_curves")
    return {"per_layer": per_layer, "best": best}
