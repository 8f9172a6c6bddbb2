"""Figures from the committed tables: they fit any output area (no fixed width), every axis is titled, and
explorers say how to use them before they are run."""

import numpy as np
import plotly.graph_objects as go
import pytest

from tv_utils import plots, widgets
from tv_utils.store import precomputed

M = "gemma3-270m"


def _figures():
    per_layer = precomputed(f"reproduce_{M}_per_layer")
    robust = precomputed(f"beyond_{M}_robustness")
    return {
        "accuracy": plots.accuracy_bars(precomputed(f"reproduce_{M}_results")),
        "layers": plots.layer_curves(per_layer, highlight=11),
        "one task": plots.layer_curves(per_layer[per_layer.task == "en_fr"]),
        "depth": plots.layer_curves(precomputed("depth_per_layer"), relative=True),
        "tsne": plots.geometry_scatter(precomputed(f"geometry_{M}_embeddings"), 11),
        "scores": plots.clustering_scores(precomputed(f"geometry_{M}_scores")),
        "conflict": plots.conflict_bars(precomputed(f"conflict_{M}")),
        "ranks": plots.answer_rank_curves(precomputed(f"vocab_{M}_answer_rank"), highlight=11),
        "mix": plots.interpolation_curves(precomputed(f"beyond_{M}_interpolation")),
        "robustness": plots.method_bars(robust, "task", "accuracy", "condition", "Where θ comes from"),
    }


@pytest.mark.parametrize("name", list(_figures()))
def test_figures_fit_and_titled(name):
    fig = _figures()[name]
    assert fig.layout.width is None, f"{name}: fixed width {fig.layout.width}"
    axes = [a for a in dir(fig.layout) if a.startswith(("xaxis", "yaxis"))]
    for axis in axes:
        title = fig.layout[axis].title.text
        assert title not in ("value", "variable"), f"{name}: default axis title {title!r}"
    assert any(fig.layout[a].title.text for a in axes if a.startswith("xaxis")), f"{name}: no x-axis title"
    assert any(fig.layout[a].title.text for a in axes if a.startswith("yaxis")), f"{name}: no y-axis title"


def test_single_task_curve_is_not_called_a_mean():
    per_layer = precomputed(f"reproduce_{M}_per_layer")
    traces = plots.layer_curves(per_layer[per_layer.task == "en_fr"]).data
    assert [t.name for t in traces if t.showlegend is not False] == ["en_fr"]
    band = [t for t in traces if t.fill == "toself"]  # and its 95% interval, shaded, between its Wilson bounds
    assert len(band) == 1 and min(band[0].y) >= 0 and max(band[0].y) <= 1


def test_every_task_has_its_own_colour():
    assert len(set(plots.TASK_COLOURS.values())) == len(plots.TASK_COLOURS) == 18


def test_explorer_text_says_how_to_use_it():
    explorer = widgets.alpha_explorer(precomputed(f"beyond_{M}_interpolation"))
    assert explorer._repr_mimebundle_()["text/plain"] == "Interactive explorer: run this cell (Shift+Enter) to use it."


def _drawn(figure) -> dict:
    """What a figure draws: its layout and traces as plain lists (FigureWidget trace ids dropped)."""
    plain = go.FigureWidget(figure).to_plotly_json() if not isinstance(figure, go.FigureWidget) else figure.to_plotly_json()
    traces = [{k: np.asarray(v).tolist() for k, v in t.items() if k != "uid"} for t in plain["data"]]
    return {"layout": plain["layout"], "data": traces}


def test_explorers_fast_paths_draw_what_a_fresh_figure_draws():
    """A slider move only moves the layer mark, a layer change only moves the points: the figure they leave
    equals the one drawn from scratch."""
    per_layer = precomputed(f"reproduce_{M}_per_layer")
    explorer = widgets.layer_explorer(per_layer, start=11)
    explorer.children[0].children[0].value = 8
    fresh = plots.layer_curves(per_layer, highlight=8, title="Task-vector accuracy by layer (layer 8 marked)")
    assert _drawn(explorer.children[2]) == _drawn(fresh)

    emb, scores = precomputed(f"geometry_{M}_embeddings"), precomputed(f"geometry_{M}_scores")
    explorer = widgets.geometry_explorer(emb, scores, start=11)
    explorer.children[0].children[1].value = "umap"
    explorer.children[0].children[0].value = 7
    assert _drawn(explorer.children[2]) == _drawn(plots.geometry_scatter(emb, 7, "umap", "task"))
