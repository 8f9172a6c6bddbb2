"""Plotly figures from the tidy tables (one function per figure; no model calls here)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

METHOD_COLOURS = {"baseline": "#9e9e9e", "icl": "#1f77b4", "tv": "#ff7f0e"}
METHOD_LABELS = {"baseline": "Baseline (zero-shot)", "icl": "ICL", "tv": "Task vector"}


def accuracy_bars(results: pd.DataFrame, title: str | None = None) -> go.Figure:
    """The paper's main figure: Baseline / ICL / Task-vector accuracy per task, grouped by category."""
    df = results.sort_values(["category", "task"], kind="stable")
    fig = go.Figure()
    for method, colour in METHOD_COLOURS.items():
        fig.add_bar(
            x=[df["category"], df["task"]], y=df[method], name=METHOD_LABELS[method], marker_color=colour,
            hovertemplate="%{x}<br>" + METHOD_LABELS[method] + ": %{y:.2f}<extra></extra>",
        )
    model = ", ".join(results["model"].unique())
    fig.update_layout(
        barmode="group", title=title or f"Accuracy per task ({model})", yaxis=dict(title="accuracy", range=[0, 1]),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0), height=500, width=1200,
        margin=dict(t=100, b=160),
    )
    return fig


def layer_curves(per_layer: pd.DataFrame, highlight: int | None = None, relative: bool = False,
                 title: str | None = None) -> go.Figure:
    """Dev accuracy of the task vector per layer: one thin line per task, mean per model in bold."""
    x = "rel_depth" if relative else "layer"
    fig = go.Figure()
    for (model, task), df in per_layer.groupby(["model", "task"], sort=False):
        fig.add_scatter(x=df[x], y=df["dev_acc"], mode="lines", line=dict(width=1), opacity=0.35,
                        name=task, legendgroup=model, showlegend=False,
                        hovertemplate=f"{task}<br>{x}=%{{x}}<br>acc=%{{y:.2f}}<extra>{model}</extra>")
    for model, df in per_layer.groupby("model", sort=False):
        mean = df.groupby(x, as_index=False)["dev_acc"].mean()
        fig.add_scatter(x=mean[x], y=mean["dev_acc"], mode="lines+markers", line=dict(width=4),
                        name=f"{model} (mean over tasks)")
    if highlight is not None:
        fig.add_vline(x=highlight, line_dash="dash", line_color="black", annotation_text=f"layer {highlight}")
    fig.update_layout(
        title=title or "Task-vector accuracy by layer (dev)", xaxis_title="relative depth" if relative else "layer",
        yaxis=dict(title="accuracy", range=[0, 1]), height=450, width=800,
    )
    return fig


def _palette(values) -> dict:
    import plotly.express as px

    colours = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24
    return {v: colours[i % len(colours)] for i, v in enumerate(dict.fromkeys(values))}


def geometry_scatter(emb: pd.DataFrame, layer: int, method: str = "tsne", colour: str = "task") -> go.Figure:
    """2-D embedding of task vectors at one layer, coloured by task or category; hover shows the demos."""
    df = emb[(emb.layer == layer) & (emb.method == method)]
    if df.empty:
        raise ValueError(f"no {method} embedding at layer {layer}; available: "
                         f"{sorted(set(zip(emb.layer, emb.method)))}")
    fig = go.Figure()
    colours = _palette(emb[colour])
    for value, part in df.groupby(colour, sort=False):
        fig.add_scatter(x=part.x, y=part.y, mode="markers", name=value, marker=dict(size=6, color=colours[value]),
                        customdata=part[["task", "demos"]], hovertemplate="%{customdata[0]}<br>%{customdata[1]}"
                                                                          "<extra></extra>")
    fig.update_layout(title=f"Task vectors at layer {layer} ({method.upper()}, coloured by {colour})",
                      xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False), height=600, width=850)
    return fig


def distance_histogram(distances: pd.DataFrame, title: str = "Cosine distance between task vectors",
                       bins: int = 60) -> go.Figure:
    """Within-task vs between-task distance densities, binned here (the raw pairs would bloat the HTML)."""
    import numpy as np

    edges = np.linspace(0, distances.distance.max(), bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    for pair, part in distances.groupby("pair"):
        density, _ = np.histogram(part.distance, bins=edges, density=True)
        fig.add_bar(x=centres, y=density, name=pair, opacity=0.6, width=edges[1] - edges[0])
    fig.update_layout(barmode="overlay", title=title, xaxis_title="cosine distance", yaxis_title="density",
                      height=400, width=700)
    return fig


def conflict_bars(table: pd.DataFrame) -> go.Figure:
    """Paper Table 2 as bars: for each (A, B), accuracy on A's and B's answers, regular vs conflicting."""
    fig = go.Figure()
    labels = [table.task_a + " / θ " + table.task_b, table.method]
    fig.add_bar(x=labels, y=table.acc_a, name="accuracy on task A (the demonstrations)", marker_color="#1f77b4")
    fig.add_bar(x=labels, y=table.acc_b, name="accuracy on task B (the patched θ)", marker_color="#ff7f0e")
    fig.update_layout(barmode="group", title="Conflicting tasks: demonstrations of A, task vector of B",
                      yaxis=dict(title="accuracy", range=[0, 1]), height=500, width=1100, margin=dict(b=180),
                      legend=dict(orientation="h", y=1.1))
    return fig


def answer_rank_curves(ranks: pd.DataFrame, highlight: int | None = None) -> go.Figure:
    """Probability of each episode's true answer when theta itself is read out (logit lens), per layer."""
    fig = go.Figure()
    for task, part in ranks.groupby("task", sort=False):
        fig.add_scatter(x=part.layer, y=part.mean_prob, mode="lines+markers", name=task,
                        customdata=part[["median_rank"]],
                        hovertemplate=f"{task}<br>layer %{{x}}<br>p(answer)=%{{y:.3f}}<br>median rank "
                                      "%{customdata[0]:.0f}<extra></extra>")
    if highlight is not None:
        fig.add_vline(x=highlight, line_dash="dash", line_color="black")
    fig.update_layout(title="Reading θ through the unembedding: probability of the true answer",
                      xaxis_title="layer", yaxis_title="mean p(answer)", height=450, width=850)
    return fig


def top_tokens_table(top: pd.DataFrame, layer: int, n: int = 8) -> go.Figure:
    df = top[(top.layer == layer) & (top["rank"] < n)]
    cells = df.groupby("task", sort=False)["token"].apply(lambda s: ", ".join(s)).reset_index()
    fig = go.Figure(go.Table(header=dict(values=["task", f"top tokens of mean θ at layer {layer}"], align="left"),
                             cells=dict(values=[cells.task, cells.token], align="left")))
    fig.update_layout(height=60 + 28 * len(cells), width=1000, margin=dict(t=10, b=10))
    return fig


def interpolation_curves(table: pd.DataFrame) -> go.Figure:
    """Accuracy on A and on B as theta moves from theta_B (alpha=0) to theta_A (alpha=1)."""
    df = table[table.kind == "alpha"]
    a, b = df.task_a.iloc[0], df.task_b.iloc[0]
    fig = go.Figure()
    fig.add_scatter(x=df.value, y=df.acc_a, mode="lines+markers", name=f"accuracy on {a}")
    fig.add_scatter(x=df.value, y=df.acc_b, mode="lines+markers", name=f"accuracy on {b}")
    fig.update_layout(title=f"α·θ({a}) + (1−α)·θ({b}) at layer {df.layer.iloc[0]}", xaxis_title="α",
                      yaxis=dict(title="accuracy", range=[0, 1]), height=420, width=750)
    return fig


def method_bars(table: pd.DataFrame, x: str, y: str, colour: str, title: str, y_range=(0, 1)) -> go.Figure:
    """Grouped bars of one measure (accuracy, cost) by task and method or condition."""
    fig = go.Figure()
    for value, part in table.groupby(colour, sort=False):
        fig.add_bar(x=part[x], y=part[y], name=str(value))
    fig.update_layout(barmode="group", title=title, yaxis=dict(title=y, range=list(y_range) if y_range else None),
                      height=450, width=900)
    return fig


def head_heatmap(effects: pd.DataFrame, top: list[tuple[int, int]] | None = None) -> go.Figure:
    """Mean causal indirect effect of every attention head over tasks (layer x head), top heads outlined."""
    mean = effects.groupby(["layer", "head"])["effect"].mean().unstack("head")
    fig = go.Figure(go.Heatmap(z=mean.to_numpy(), x=[f"head {h}" for h in mean.columns], y=mean.index,
                               colorscale="RdBu", zmid=0, colorbar=dict(title="Δ p(answer)")))
    for layer, head in top or []:
        fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line=dict(color="black", width=2))
    fig.update_layout(title="Indirect effect of each head (mean over tasks); top heads outlined",
                      xaxis_title="head", yaxis_title="layer", height=560)
    return fig
