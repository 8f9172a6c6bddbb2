"""Plotly figures from the tidy tables (one function per figure; no model calls here)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .tasks import CATEGORIES, tasks_in

__all__ = ["accuracy_bars", "add_band", "answer_rank_curves", "BAND_NOTE", "CATEGORY_COLOURS", "CATEGORY_SHADES",
           "clustering_scores", "conflict_bars", "conflict_layer_curves", "distance_histogram", "error_bars",
           "geometry_scatter", "geometry_title", "head_heatmap", "interpolation_curves", "INTERVAL_NOTE", "k_curve",
           "layer_curves", "mapping_rank_scatter", "mark_layer", "mean_curve", "method_bars", "METHOD_COLOURS",
           "method_label", "METHOD_LABELS", "OTHER_COLOURS", "scorecard_figure", "short_name", "SHORT_TASK_NAMES",
           "TASK_CATEGORY", "task_colour", "TASK_COLOURS", "TASK_DASHES", "TOP_LEGEND", "top_tokens_table",
           "vector_layer_curves", "VECTOR_METHODS"]

METHOD_COLOURS = {"baseline": "#9e9e9e", "icl": "#1f77b4", "tv": "#ff7f0e"}
METHOD_LABELS = {"baseline": "Baseline (zero-shot)", "icl": "ICL", "tv": "Task vector"}

# One hue family per category (blues, greens, reds/oranges, purples), shades far enough apart to tell the
# tasks of a category apart; lines also cycle through dash styles within a category.
CATEGORY_SHADES = {
    "algorithmic": ["#08306b", "#2171b5", "#6baed6", "#00838f", "#4dd0e1", "#5c6bc0"],
    "translation": ["#1b5e20", "#43a047", "#9ccc65", "#827717"],
    "linguistic": ["#b71c1c", "#f4511e", "#ffa726", "#e57373"],
    "knowledge": ["#4a148c", "#8e24aa", "#d81b60", "#ba68c8"],
}
CATEGORY_COLOURS = {c: shades[1] for c, shades in CATEGORY_SHADES.items()}
TASK_COLOURS = {t: CATEGORY_SHADES[c][i] for c in CATEGORIES for i, t in enumerate(tasks_in(c))}
TASK_DASHES = {t: ("solid", "dash", "dot")[i % 3] for c in CATEGORIES for i, t in enumerate(tasks_in(c))}
TASK_CATEGORY = {t: c for c in CATEGORIES for t in tasks_in(c)}
# Short names where the task's name is too long for a tick label.
SHORT_TASK_NAMES = {"present_simple_past_simple": "past tense", "present_simple_gerund": "gerund",
                    "plural_singular": "plural→singular", "country_capital": "capital",
                    "location_continent": "continent", "location_religion": "religion",
                    "person_language": "language"}
OTHER_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def short_name(task: str) -> str:
    """A short label for a task (for tick labels), e.g. "past tense" for present_simple_past_simple."""
    return SHORT_TASK_NAMES.get(task, task)


def task_colour(task: str, index: int = 0) -> str:
    """The task's colour in the 18-task palette; tasks outside it (custom) cycle through other colours."""
    return TASK_COLOURS.get(task, OTHER_COLOURS[index % len(OTHER_COLOURS)])

TOP_LEGEND = dict(orientation="h", yanchor="bottom", y=1.02, x=0)
INTERVAL_NOTE = "bars: 95% intervals"
BAND_NOTE = " (shaded: 95% interval)"


def error_bars(df: pd.DataFrame, column: str) -> dict | None:
    """Plotly error bars from a table's `<column>_lo` / `<column>_hi` (its 95% interval), if it has them."""
    if f"{column}_lo" not in df or f"{column}_hi" not in df:
        return None
    return dict(type="data", symmetric=False, array=(df[f"{column}_hi"] - df[column]).clip(lower=0).tolist(),
                arrayminus=(df[column] - df[f"{column}_lo"]).clip(lower=0).tolist(), thickness=1.2, width=3)


def add_band(fig: go.Figure, x, lo, hi, colour: str, name: str, **kw) -> None:
    """A shaded 95% band between lo and hi (drawn before its line, so the line stays on top)."""
    fig.add_scatter(x=list(x) + list(x)[::-1], y=list(hi) + list(lo)[::-1], fill="toself", fillcolor=colour,
                    opacity=0.18, line=dict(width=0), hoverinfo="skip", name=name, showlegend=False, **kw)


def accuracy_bars(results: pd.DataFrame, title: str | None = None) -> go.Figure:
    """The paper's main figure: Baseline / ICL / Task-vector accuracy per task, grouped by category."""
    df = results.sort_values(["category", "task"], kind="stable")
    fig = go.Figure()
    for method, colour in METHOD_COLOURS.items():
        fig.add_bar(
            x=[df["category"], df["task"].map(short_name)], y=df[method], name=METHOD_LABELS[method],
            marker_color=colour, customdata=df["task"], error_y=error_bars(df, method),
            hovertemplate="%{customdata}<br>" + METHOD_LABELS[method] + ": %{y:.2f}<extra></extra>",
        )
    model = ", ".join(results["model"].unique())
    note = f" ({INTERVAL_NOTE})" if error_bars(df, "tv") else ""
    fig.update_layout(
        barmode="group", title=title or f"Accuracy per task ({model}){note}", xaxis_title="task (by category)",
        yaxis=dict(title="accuracy", range=[0, 1]), legend=TOP_LEGEND, height=480, margin=dict(t=100, b=120),
        xaxis_tickangle=-45,
    )
    return fig


def layer_curves(per_layer: pd.DataFrame, highlight: int | None = None, relative: bool = False,
                 title: str | None = None) -> go.Figure:
    """Dev accuracy of the task vector per layer.

    One task: one bold line (per model). One model, several tasks: a line per task in its category's colours,
    legend grouped by category, and the mean over tasks in bold. Several models: thin lines per task in the
    model's colour (hover names the task) and the mean per model in bold.
    """
    x = "rel_depth" if relative else "layer"
    models, tasks = list(dict.fromkeys(per_layer["model"])), list(dict.fromkeys(per_layer["task"]))
    fig = go.Figure()

    def hover(label):
        return f"{label}<br>{x}=%{{x:.2f}}<br>accuracy=%{{y:.2f}}<extra></extra>"

    if len(tasks) == 1:
        for i, (model, df) in enumerate(per_layer.groupby("model", sort=False)):
            name = tasks[0] if len(models) == 1 else f"{tasks[0]} ({model})"
            colour = task_colour(tasks[0]) if len(models) == 1 else OTHER_COLOURS[i % len(OTHER_COLOURS)]
            if "dev_acc_lo" in df:
                add_band(fig, df[x], df["dev_acc_lo"], df["dev_acc_hi"], colour, f"{name}: 95% interval")
            fig.add_scatter(x=df[x], y=df["dev_acc"], mode="lines+markers", line=dict(width=3, color=colour),
                            marker_color=colour, name=name, hovertemplate=hover(name))
    else:
        for i, model in enumerate(models):
            colour = OTHER_COLOURS[i % len(OTHER_COLOURS)]
            for j, (task, df) in enumerate(per_layer[per_layer.model == model].groupby("task", sort=False)):
                if len(models) == 1:
                    category = TASK_CATEGORY.get(task, "other")
                    fig.add_scatter(x=df[x], y=df["dev_acc"], mode="lines", name=task, opacity=0.8,
                                    line=dict(width=1.5, color=task_colour(task, j), dash=TASK_DASHES.get(task)),
                                    legendgroup=category, legendgrouptitle_text=category,
                                    hovertemplate=hover(task))
                else:
                    fig.add_scatter(x=df[x], y=df["dev_acc"], mode="lines", name=f"{task} ({model})",
                                    line=dict(width=1, color=colour), opacity=0.35, legendgroup=model,
                                    showlegend=False, hovertemplate=hover(f"{task} ({model})"))
            mean = mean_curve(per_layer[per_layer.model == model], x)
            name = f"mean over {len(tasks)} tasks" if len(models) == 1 else f"{model}: mean over tasks"
            if "lo" in mean:
                add_band(fig, mean[x], mean["lo"], mean["hi"], "black" if len(models) == 1 else colour,
                         f"{name}: 95% interval", legendgroup=model)
            fig.add_scatter(x=mean[x], y=mean["dev_acc"], mode="lines+markers", name=name, legendgroup=model,
                            legendrank=1,
                            line=dict(width=4, color="black" if len(models) == 1 else colour),
                            hovertemplate=hover(name))
    if highlight is not None:
        mark_layer(fig, highlight)
    many = len(models) == 1 and len(tasks) > 1
    fig.update_layout(
        title=title or "Task-vector accuracy by layer (dev)", xaxis_title="relative depth" if relative else "layer",
        yaxis=dict(title="accuracy" + (BAND_NOTE if "dev_acc_lo" in per_layer else ""), range=[0, 1]),
        height=660 if many else 450,
        legend=dict(font=dict(size=10), tracegroupgap=4) if many else None,
    )
    return fig


def mean_curve(per_layer: pd.DataFrame, x: str = "layer") -> pd.DataFrame:
    """Mean dev accuracy over tasks at each layer, with a 95% interval when the table says how many episodes each
    accuracy rests on: for one task its Wilson interval, for several `protocol.mean_of_proportions`."""
    from .protocol import mean_of_proportions

    if "n_dev" not in per_layer:
        return per_layer.groupby(x, as_index=False)["dev_acc"].mean()
    if per_layer.task.nunique() == 1 and "dev_acc_lo" in per_layer:
        return per_layer[[x, "dev_acc", "dev_acc_lo", "dev_acc_hi"]].rename(columns={"dev_acc_lo": "lo",
                                                                                     "dev_acc_hi": "hi"})
    rows = [{x: at, "dev_acc": part.dev_acc.mean(),
             **dict(zip(("lo", "hi"), mean_of_proportions(part.dev_acc, part.n_dev)))}
            for at, part in per_layer.groupby(x, sort=True)]
    return pd.DataFrame(rows)


def mark_layer(fig: go.Figure, layer: int) -> go.Figure:
    """Mark `layer` with a dashed line and a label."""
    fig.add_vline(x=layer, line_dash="dash", line_color="black", annotation_text=f"layer {layer}")
    return fig


def geometry_title(layer: int, method: str, colour: str) -> str:
    return f"Task vectors at layer {layer} ({method_label(method)}, coloured by {colour})"


def method_label(method: str) -> str:
    return method.upper().replace("TSNE", "t-SNE")


def geometry_scatter(emb: pd.DataFrame, layer: int, method: str = "tsne", colour: str = "task") -> go.Figure:
    """2-D embedding of task vectors at one layer, coloured by task or category; hover shows the demos."""
    df = emb[(emb.layer == layer) & (emb.method == method)]
    if df.empty:
        raise ValueError(f"no {method} embedding at layer {layer}; available: "
                         f"{sorted(set(zip(emb.layer, emb.method)))}")
    fig = go.Figure()
    for i, (value, part) in enumerate(df.groupby(colour, sort=False)):
        marker_colour = task_colour(value, i) if colour == "task" else CATEGORY_COLOURS.get(value, OTHER_COLOURS[i])
        fig.add_scatter(x=part.x, y=part.y, mode="markers", name=value, marker=dict(size=6, color=marker_colour),
                        legendgroup=part.category.iloc[0] if colour == "task" else None,
                        legendgrouptitle_text=part.category.iloc[0] if colour == "task" else None,
                        customdata=part[["task", "demos"]], hovertemplate="%{customdata[0]}<br>%{customdata[1]}"
                                                                          "<extra></extra>")
    name = method_label(method)
    fig.update_layout(title=geometry_title(layer, method, colour),
                      xaxis=dict(title=f"{name} 1", showticklabels=False),
                      yaxis=dict(title=f"{name} 2", showticklabels=False),
                      legend=dict(font=dict(size=10), tracegroupgap=4), height=680)
    return fig


def clustering_scores(scores: pd.DataFrame) -> go.Figure:
    """How well task vectors cluster by task at each layer: 5-NN task identification and silhouette."""
    fig = go.Figure()
    fig.add_scatter(x=scores.layer, y=scores.knn_accuracy, mode="lines+markers",
                    name="5-NN task identification (accuracy)")
    fig.add_scatter(x=scores.layer, y=scores.silhouette, mode="lines+markers", name="silhouette (cosine)")
    fig.update_layout(title="How well task vectors cluster by task, per layer", xaxis_title="layer",
                      yaxis_title="score", legend=TOP_LEGEND, height=420, margin=dict(t=90))
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
                      legend=dict(title="pairs of task vectors"), height=400)
    return fig


def conflict_bars(table: pd.DataFrame) -> go.Figure:
    """Paper Table 2 as bars: for each (A, B), accuracy on A's and B's answers, regular vs conflicting."""
    fig = go.Figure()
    pairs = [f"{short_name(a)} →<br>θ {short_name(b)}" for a, b in zip(table.task_a, table.task_b)]
    methods = table.method.map({"ICL (demos of A)": "ICL", "ICL + theta of B": "θ(B), B's layer",
                                "ICL + theta of B, best override layer": "θ(B), best layer"}).fillna(table.method)
    methods = methods + [f" ({layer})" if m != "ICL (demos of A)" else ""
                         for m, layer in zip(table.method, table.layer)]
    labels = [pairs, methods]
    hover = "%{x}: %{y:.2f}<extra>%{fullData.name}</extra>"
    fig.add_bar(x=labels, y=table.acc_a, name="accuracy on task A (the demonstrations)", marker_color="#1f77b4",
                hovertemplate=hover, error_y=error_bars(table, "acc_a"))
    fig.add_bar(x=labels, y=table.acc_b, name="accuracy on task B (the patched θ)", marker_color="#ff7f0e",
                hovertemplate=hover, error_y=error_bars(table, "acc_b"))
    note = f"<br><sup>{INTERVAL_NOTE}</sup>" if error_bars(table, "acc_b") else ""
    fig.update_layout(barmode="group", title="Conflicting tasks: demonstrations of A, task vector of B" + note,
                      xaxis=dict(title="task A (demonstrations) → task B (θ), without and with θ(B)",
                                 tickfont=dict(size=11)),
                      yaxis=dict(title="accuracy", range=[0, 1]), height=520, margin=dict(t=110, b=120),
                      legend=TOP_LEGEND)
    return fig


def conflict_layer_curves(by_layer: pd.DataFrame) -> go.Figure:
    """Demonstrations of A with theta(B) written at each layer: accuracy on A's and on B's answers per layer, one
    panel per pair, with B's own best layer (the paper's rule, dashed) and the best override layer (dotted)."""
    pairs = list(dict.fromkeys(zip(by_layer.task_a, by_layer.task_b)))
    fig = make_subplots(rows=len(pairs), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[f"demos of {short_name(a)}, θ of {short_name(b)}" for a, b in pairs])
    for row, (a, b) in enumerate(pairs, start=1):
        part = by_layer[(by_layer.task_a == a) & (by_layer.task_b == b)]
        for col, label, colour in (("acc_a", "on A (the demonstrations)", "#1f77b4"),
                                   ("acc_b", "on B (the patched θ)", "#ff7f0e")):
            add_band(fig, part.layer, part[f"{col}_lo"], part[f"{col}_hi"], colour, label, row=row, col=1)
            fig.add_scatter(x=part.layer, y=part[col], mode="lines+markers", name=f"accuracy {label}",
                            line_color=colour, marker_size=4, legendgroup=col, showlegend=row == 1,
                            hovertemplate=f"layer %{{x}}: %{{y:.2f}}<extra>{label}</extra>", row=row, col=1)
        for column, dash in (("paper_layer", "dash"), ("override_layer", "dot")):
            fig.add_vline(x=int(part[column].iloc[0]), line_dash=dash, line_color="black", row=row, col=1)
    fig.update_yaxes(range=[0, 1], title_text="accuracy", title_font_size=11)
    fig.update_xaxes(title_text="layer θ(B) is written at", row=len(pairs), col=1)
    fig.update_layout(title="Conflicting tasks, layer by layer (dashed: B's own best layer, the paper's rule; "
                            "dotted: best override layer, chosen on dev)<br><sup>shaded: 95% intervals</sup>",
                      height=180 + 190 * len(pairs), legend=TOP_LEGEND, margin=dict(t=120), title_font_size=14)
    return fig


def answer_rank_curves(ranks: pd.DataFrame, highlight: int | None = None) -> go.Figure:
    """Median rank of each episode's true answer when theta itself is read out (logit lens), per layer: one
    panel per category, one line per task (hover adds the mean probability of the answer)."""
    categories = [c for c in CATEGORIES if c in set(ranks.task.map(TASK_CATEGORY))]
    fig = make_subplots(rows=2, cols=2, subplot_titles=categories, shared_xaxes=True, shared_yaxes=True,
                        vertical_spacing=0.1, horizontal_spacing=0.05)
    for i, (task, part) in enumerate(ranks.groupby("task", sort=False)):
        category = TASK_CATEGORY[task]
        panel = categories.index(category)
        fig.add_scatter(x=part.layer, y=part.median_rank, mode="lines+markers", name=task,
                        line=dict(color=task_colour(task, i), dash=TASK_DASHES.get(task)), marker=dict(size=4),
                        legendgroup=category, legendgrouptitle_text=category,
                        customdata=part[["mean_prob"]], row=panel // 2 + 1, col=panel % 2 + 1,
                        hovertemplate=f"{task}<br>layer %{{x}}<br>median rank %{{y:,.0f}}<br>mean p(answer) "
                                      "%{customdata[0]:.3f}<extra></extra>")
    if highlight is not None:
        fig.add_vline(x=highlight, line_dash="dash", line_color="black", row="all", col="all")
    fig.update_yaxes(type="log", autorange="reversed")
    fig.update_yaxes(title_text="median rank of the answer", col=1)
    fig.update_xaxes(title_text="layer", row=2)
    fig.update_layout(title="Reading θ through the unembedding: rank of the true answer (0 = top token, log scale)",
                      legend=dict(font=dict(size=10), tracegroupgap=6), height=640)
    return fig


def top_tokens_table(top: pd.DataFrame, layer: int, n: int = 8) -> go.Figure:
    """The top n tokens of each task's mean theta at one layer, as a table figure."""
    df = top[(top.layer == layer) & (top["rank"] < n)]
    cells = df.groupby("task", sort=False)["token"].apply(lambda s: ", ".join(s)).reset_index()
    fig = go.Figure(go.Table(header=dict(values=["task", f"top tokens of mean θ at layer {layer}"], align="left"),
                             cells=dict(values=[cells.task, cells.token], align="left"), columnwidth=[1, 3]))
    fig.update_layout(height=60 + 28 * len(cells), margin=dict(t=10, b=10, l=10, r=10))
    return fig


def interpolation_curves(table: pd.DataFrame) -> go.Figure:
    """Accuracy on A and on B as theta moves from theta_B (alpha=0) to theta_A (alpha=1)."""
    df = table[table.kind == "alpha"]
    a, b = df.task_a.iloc[0], df.task_b.iloc[0]
    fig = go.Figure()
    for col, task, colour in (("acc_a", f"{a} (A)", OTHER_COLOURS[0]), ("acc_b", f"{b} (B)", OTHER_COLOURS[1])):
        if f"{col}_lo" in df:
            add_band(fig, df.value, df[f"{col}_lo"], df[f"{col}_hi"], colour, f"accuracy on {task}: 95% interval")
        fig.add_scatter(x=df.value, y=df[col], mode="lines+markers", name=f"accuracy on {task}", line_color=colour)
    fig.update_layout(title=f"α·θ(A) + (1−α)·θ(B) at layer {df.layer.iloc[0]}", xaxis_title="α",
                      yaxis=dict(title="accuracy", range=[0, 1]), legend=TOP_LEGEND, height=440,
                      margin=dict(t=100))
    return fig


def method_bars(table: pd.DataFrame, x: str, y: str, colour: str, title: str, y_range=(0, 1)) -> go.Figure:
    """Grouped bars of one measure (accuracy, cost) by task and method or condition."""
    fig = go.Figure()
    for value, part in table.groupby(colour, sort=False):
        fig.add_bar(x=part[x], y=part[y], name=str(value), error_y=error_bars(part, y))
    if error_bars(table, y):
        title += f"<br><sup>{INTERVAL_NOTE}</sup>"
    fig.update_layout(barmode="group", title=title, xaxis_title=x,
                      yaxis=dict(title=y, range=list(y_range) if y_range else None),
                      legend=dict(title=colour), height=450)
    return fig


def head_heatmap(effects: pd.DataFrame, top: list[tuple[int, int]] | None = None,
                 title: str | None = None) -> go.Figure:
    """Causal indirect effect of every attention head (layer x head), averaged over the tasks in `effects`;
    the top heads outlined."""
    mean = effects.groupby(["layer", "head"])["effect"].mean().unstack("head")
    fig = go.Figure(go.Heatmap(z=mean.to_numpy(), x=[f"head {h}" for h in mean.columns], y=mean.index,
                               colorscale="RdBu", zmid=0, colorbar=dict(title="Δ p(answer)"),
                               hovertemplate="layer %{y}, %{x}: Δ p(answer) %{z:.3f}<extra></extra>"))
    for layer, head in top or []:
        fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line=dict(color="black", width=2))
    fig.update_layout(title=title or "Indirect effect of each head (mean over tasks); top heads outlined",
                      xaxis_title="head", yaxis_title="layer", height=560)
    return fig


VECTOR_METHODS = {"tv": ("task vector (replaces the state)", "#ff7f0e"),
                  "tv_add": ("task vector minus the mean θ, added", "#8c564b"),
                  "fv": ("function vector (added)", "#2ca02c")}


def vector_layer_curves(per_layer: pd.DataFrame, title: str) -> go.Figure:
    """Dev accuracy per layer of the task vector and the function vector (one task, or the mean over tasks)."""
    fig = go.Figure()
    for method, (label, colour) in VECTOR_METHODS.items():
        curve = mean_curve(per_layer[per_layer.method == method])
        if "lo" in curve:
            add_band(fig, curve.layer, curve.lo, curve.hi, colour, f"{label}: 95% interval")
        fig.add_scatter(x=curve.layer, y=curve.dev_acc, mode="lines+markers", name=label,
                        line=dict(color=colour, width=3))
    note = BAND_NOTE if "n_dev" in per_layer else ""
    fig.update_layout(title=title, xaxis_title="layer", yaxis=dict(title="dev accuracy" + note, range=[0, 1]),
                      legend=TOP_LEGEND, height=440, margin=dict(t=110))
    return fig


def k_curve(by_k: pd.DataFrame, chosen: int | None = None) -> go.Figure:
    """Function-vector accuracy against the number of heads summed (mean over tasks, dev and test)."""
    mean = by_k.groupby("k")[["dev_accuracy", "accuracy"]].mean()
    fig = go.Figure()
    fig.add_scatter(x=mean.index, y=mean.dev_accuracy, mode="lines+markers", name="dev (best layer)")
    test = mean_curve(by_k.rename(columns={"accuracy": "dev_acc", "n_test": "n_dev"}), "k")
    if "lo" in test:
        add_band(fig, test.k, test.lo, test.hi, OTHER_COLOURS[1], "test: 95% interval")
    fig.add_scatter(x=mean.index, y=mean.accuracy, mode="lines+markers", name="test (layer chosen on dev)",
                    line_color=OTHER_COLOURS[1])
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dash", annotation_text=f"k = {chosen}")
    fig.update_layout(title=f"Function-vector accuracy by number of heads (mean over {by_k.task.nunique()} tasks)",
                      xaxis=dict(title="heads summed (k)", type="log", tickvals=list(mean.index)),
                      yaxis=dict(title="accuracy", range=[0, 1]), legend=TOP_LEGEND, height=420, margin=dict(t=110))
    return fig


def mapping_rank_scatter(table: pd.DataFrame, methods=("icl", "tv", "fv")) -> go.Figure:
    """Each method's accuracy per task, the tasks ordered by their mapping rank (distinct outputs per input)."""
    labels = {"icl": ("ICL", METHOD_COLOURS["icl"]), **{m: VECTOR_METHODS[m] for m in ("tv", "tv_add", "fv")}}
    df = table.sort_values(["mapping_rank", "task"], kind="stable")
    rows = [f"{short_name(t)} ({r:.2f})" for t, r in zip(df.task, df.mapping_rank)]
    fig = go.Figure()
    for method in methods:
        label, colour = labels[method]
        fig.add_scatter(x=df[method], y=rows, mode="markers", name=label.split(" (")[0],
                        marker=dict(color=colour, size=10), hovertemplate="%{y}: %{x:.2f}<extra></extra>")
    fig.update_layout(title="Accuracy per task, by mapping rank (distinct outputs per input, in brackets)",
                      xaxis=dict(title="test accuracy", range=[-0.02, 1.02]), yaxis_title="task (mapping rank)",
                      legend=TOP_LEGEND, height=620, margin=dict(t=110))
    return fig


def scorecard_figure(card: pd.DataFrame) -> go.Figure:
    """The replication scorecard per task: our accuracy with its 95% interval against the paper's value, one
    panel each for baseline, ICL and task vector (hover gives the verdict)."""
    acc = card[card.section == "accuracy"]
    metrics = [m for m in METHOD_COLOURS if m in set(acc.metric)]
    rated = acc[acc.verdict != "not in paper"]
    titles = [f"{METHOD_LABELS[m]}: paper's value within our interval on "
              f"{(rated[rated.metric == m].verdict == 'within').sum()} of {(rated.metric == m).sum()} tasks"
              for m in metrics]
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=titles)
    for row, metric in enumerate(metrics, start=1):
        df = acc[acc.metric == metric]
        ticks = df.task.map(short_name)
        fig.add_scatter(x=ticks, y=df.ours, mode="markers", name=f"ours: {METHOD_LABELS[metric]}",
                        marker=dict(color=METHOD_COLOURS[metric], size=9), row=row, col=1,
                        error_y=dict(type="data", symmetric=False, array=(df.ours_hi - df.ours).tolist(),
                                     arrayminus=(df.ours - df.ours_lo).tolist(), thickness=1.5),
                        customdata=df[["task", "verdict"]],
                        hovertemplate="%{customdata[0]}: %{y:.2f}<br>verdict: %{customdata[1]}<extra>ours</extra>")
        fig.add_scatter(x=ticks, y=df.paper, mode="markers", name=f"paper ({df.paper_model.iloc[0]})",
                        marker=dict(color="black", symbol="diamond-open", size=10, line=dict(width=2)),
                        showlegend=row == 1, legendgroup="paper", row=row, col=1,
                        customdata=df[["task"]], hovertemplate="%{customdata[0]}: %{y:.2f}<extra>paper</extra>")
    fig.update_yaxes(range=[-0.03, 1.03], title_text="accuracy")
    fig.update_xaxes(tickangle=-45)
    fig.update_layout(title=f"Replication scorecard: {acc.model.iloc[0]} per task (bars: 95% intervals) against "
                            "the paper", legend=TOP_LEGEND, height=300 * len(metrics) + 220, margin=dict(t=120, b=110))
    return fig
