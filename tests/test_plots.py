"""Figures from the committed tables: they fit any output area (no fixed width), every axis is titled, and
explorers say how to use them before they are run."""

import json

import pytest

from tv_utils import plots, widgets
from tv_utils.store import precomputed

pytestmark = pytest.mark.tiny

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


PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _drawn(out) -> dict:
    """The plotly figure an explorer's Output widget shows (its only output)."""
    (output,) = out.outputs
    return output["data"][PLOTLY_MIME]


def test_explorers_redraw_what_a_fresh_figure_draws():
    """After a control moves, an explorer shows exactly the figure `plots` draws from scratch for that state."""
    per_layer = precomputed(f"reproduce_{M}_per_layer")
    explorer = widgets.layer_explorer(per_layer, start=11)
    explorer.children[0].children[0].value = 8
    fresh = plots.layer_curves(per_layer, highlight=8,
                               title="Task-vector accuracy by layer (layer 8 marked, dev episodes)")
    assert _drawn(explorer.children[2]) == fresh._repr_mimebundle_()[PLOTLY_MIME]

    emb, scores = precomputed(f"geometry_{M}_embeddings"), precomputed(f"geometry_{M}_scores")
    explorer = widgets.geometry_explorer(emb, scores, start=11)
    explorer.children[0].children[1].value = "umap"
    explorer.children[0].children[0].value = 7
    assert _drawn(explorer.children[2]) == \
        plots.geometry_scatter(emb, 7, "umap", "task")._repr_mimebundle_()[PLOTLY_MIME]


def test_explorer_state_holds_its_figure_not_plotly_js():
    """What a notebook saves of an explorer (its widget state) is its figure's data, tens of KB: it shows the
    figure without a kernel, and carries no copy of plotly.js (5 MB, as a FigureWidget's state did); the
    geometry explorer's, with the demonstrations of 900 points as hover text, is the largest (about 280 KB)."""
    from ipywidgets.embed import dependency_state

    explorers = {"layer": widgets.layer_explorer(precomputed(f"reproduce_{M}_per_layer")),
                 "alpha": widgets.alpha_explorer(precomputed(f"beyond_{M}_interpolation")),
                 "geometry": widgets.geometry_explorer(precomputed(f"geometry_{M}_embeddings"))}
    for name, explorer in explorers.items():
        state = json.dumps(dependency_state(explorer))
        assert PLOTLY_MIME in state, name
        assert len(state) < 400_000 and "FigureWidget" not in state, (name, len(state))  # plotly.js: 5 MB


def test_explorers_open_where_the_prose_points():
    """01's playground and 02's results explorer open on the task their text names, one where ICL works (and,
    in 02, the task vector is not detectably worse); 07's α slider opens at the crossing its notebook prints."""
    import re
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "notebooks"
    results = precomputed(f"reproduce_{M}_results").set_index("task")
    for name, call in (("01_icl_basics", "icl_playground"), ("02_task_vectors", "results_explorer")):
        cells = json.loads((folder / f"{name}.ipynb").read_text())["cells"]
        code = next("".join(c["source"]) for c in cells if f"widgets.{call}(" in "".join(c["source"]))
        start = re.search(r'start="(\w+)"', code)[1]
        prose = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        assert f"It opens on `{start}`" in prose, name
        row = results.loc[start]
        assert row.icl_lo > 0.75 and row.baseline_hi < 0.25, (name, start)
        if name.startswith("02"):
            assert row.tv_vs_icl == "no detectable difference"
            explorer = widgets.results_explorer(results.reset_index(), precomputed(f"reproduce_{M}_per_layer"), start)
            assert f"<b>{start}</b>" in explorer.children[1].value

    mix = precomputed(f"beyond_{M}_interpolation")
    explorer = widgets.alpha_explorer(mix)
    cells = json.loads((folder / "07_beyond.ipynb").read_text())["cells"]
    printed = "".join("".join(o.get("text", "")) for c in cells if c["cell_type"] == "code"
                      for o in c.get("outputs", []))
    crossing = float(re.search(r"first exceeds B at α = ([\d.]+)", printed)[1])
    assert explorer.children[0].value == widgets.crossing(mix) == crossing
    alpha = mix[mix.kind == "alpha"]
    assert alpha[alpha.value < crossing].eval("acc_a <= acc_b").all()
