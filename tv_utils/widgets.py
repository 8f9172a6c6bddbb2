"""ipywidgets for the notebooks: they only display. Explorers show precomputed tables; the few that need
the model (ICL playground, your own task, conflicting pair) call an `analyses` function on demand. The ICL
playground and the conflict widget first look a setting up in the stored table of every setting they offer
(`python -m tv_utils widgets`, for the default model), and run the model only for one it lacks.

Each builder returns the widget box. Figures and tables are drawn into Output widgets, redrawn on change. Not
plotly's FigureWidget: its saved widget state holds the whole plotly.js bundle (5 MB per notebook), where an
Output's holds only the figure (tens of KB), and a reloaded page redraws an Output from the kernel's state.
"""

from __future__ import annotations

import html
import time

import ipywidgets as w
import pandas as pd
from IPython.display import HTML

from . import plots
from .analyses import conflict, icl
from .protocol import KIT, best_mean_layer

__all__ = ["alpha_explorer", "conflict_widget", "crossing", "custom_task_widget", "EXAMPLE_QUERIES", "EXAMPLE_TASK",
           "Explorer", "geometry_explorer", "icl_playground", "layer_explorer", "results_explorer",
           "vector_explorer", "vocab_explorer"]


class Explorer(w.VBox):
    """A VBox whose plain-text form (shown where widgets are not rendered, e.g. a notebook not run yet) says
    how to use it, instead of the repr of its children."""

    def __repr__(self) -> str:
        return "Interactive explorer: run this cell (Shift+Enter) to use it."


def _table_html(df: pd.DataFrame, css_class: str, float_format="{:.2f}") -> HTML:
    return HTML(df.to_html(index=False, classes=css_class, float_format=float_format.format, border=0))


def _show(out: w.Output, *objects) -> None:
    """Replace what an Output widget shows (figures, HTML) by setting its outputs directly.

    Capturing with `with out:` makes nbclient (nbconvert --execute, nbval) echo the captured output to the
    kernel over the shell channel while the cell runs, which can leave it waiting for the cell's reply until
    its timeout (jupyter/nbclient#312); setting the state avoids that and looks the same in a browser.
    """
    from IPython.core.interactiveshell import InteractiveShell

    fmt = InteractiveShell.instance().display_formatter.format
    outputs = []
    for obj in objects:
        if hasattr(obj, "_repr_mimebundle_"):  # plotly figures: the bundle of the current renderer
            data, metadata = obj._repr_mimebundle_(), {}
        else:
            data, metadata = fmt(obj, exclude={"text/plain"})
        outputs.append({"output_type": "display_data", "data": data, "metadata": metadata})
    out.outputs = tuple(outputs)


def layer_explorer(per_layer: pd.DataFrame, start: int | None = None) -> Explorer:
    """Slider over layers and a task dropdown: the accuracy curves with the chosen layer marked, and the
    per-task accuracy at that layer (from a precomputed per-layer table)."""
    layers = sorted(per_layer["layer"].unique())
    best = best_mean_layer(per_layer)
    slider = w.IntSlider(value=best if start is None else start, min=layers[0], max=layers[-1],
                         description="layer", continuous_update=False)
    tasks = ["all tasks"] + list(dict.fromkeys(per_layer["task"]))
    task = w.Dropdown(options=tasks, description="task")
    note, figure, table_out = w.HTML(), w.Output(), w.Output()

    def redraw(_=None):
        df = per_layer if task.value == "all tasks" else per_layer[per_layer.task == task.value]
        layer = slider.value
        at_layer = df[df.layer == layer][["task", "category", "dev_acc"]].rename(columns={"dev_acc": "accuracy"})
        note.value = (f"<b>layer {layer}</b>: mean accuracy <b class='tv-layer-acc'>{at_layer.accuracy.mean():.2f}"
                      f"</b> on the dev episodes (best mean layer: {best})")
        _show(figure, plots.layer_curves(df, highlight=layer,
                                         title=f"Task-vector accuracy by layer (layer {layer} marked, dev episodes)"))
        _show(table_out, _table_html(at_layer.sort_values("accuracy", ascending=False), "tv-layer-table"))

    slider.observe(redraw, "value")
    task.observe(redraw, "value")
    redraw()
    return Explorer([w.HBox([slider, task]), note, figure, table_out])


def geometry_explorer(emb: pd.DataFrame, scores: pd.DataFrame | None = None, start: int | None = None) -> Explorer:
    """Dropdowns for layer (opening at `start`, else the first), method and colouring over precomputed 2-D
    embeddings of task vectors."""
    layers = sorted(int(v) for v in emb.layer.unique())
    layer = w.Dropdown(options=layers, value=layers[0] if start is None else start, description="layer")
    method = w.Dropdown(options=sorted(emb.method.unique()), description="method")
    colour = w.Dropdown(options=["task", "category"], description="colour by")
    note, figure = w.HTML(), w.Output()

    def redraw(_=None):
        if scores is not None:
            row = scores[scores.layer == layer.value].iloc[0]
            note.value = (f"layer {layer.value}: kNN task identification <b>{row.knn_accuracy:.2f}</b>, "
                          f"silhouette <b>{row.silhouette:.2f}</b>")
        _show(figure, plots.geometry_scatter(emb, layer.value, method.value, colour.value))

    for control in (layer, method, colour):
        control.observe(redraw, "value")
    redraw()
    return Explorer([w.HBox([layer, method, colour]), note, figure])


def vocab_explorer(top: pd.DataFrame, n: int = 8, start: int | None = None) -> Explorer:
    """Slider over layers (opening at `start`, else the middle one): the top word-like tokens of each task's
    mean theta at that layer, either raw or task-specific (tokens that rank high for many tasks removed; see
    `vocab.vocabulary_projection`)."""
    layers = sorted(int(v) for v in top.layer.unique())
    slider = w.SelectionSlider(options=layers, value=layers[len(layers) // 2] if start is None else start,
                               description="layer",
                               continuous_update=False)
    kind = w.ToggleButtons(options=["task-specific", "raw"], description="tokens")
    out = w.Output()

    def redraw(_=None):
        specific = kind.value == "task-specific"
        df = top[(top.layer == slider.value) & (top["rank"] < n) & (top["specific"] == specific)]
        table = df.groupby("task", sort=False)["token"].apply(", ".join).reset_index()
        _show(out, _table_html(table.rename(columns={"token": f"top tokens at layer {slider.value}"}),
                               "tv-vocab-table"))

    slider.observe(redraw, "value")
    kind.observe(redraw, "value")
    redraw()
    return Explorer([w.HBox([slider, kind]), out])


def crossing(table: pd.DataFrame) -> float:
    """The first α of an interpolation table where accuracy on A exceeds accuracy on B (else the last α)."""
    df = table[table.kind == "alpha"]
    above = df.value[df.acc_a > df.acc_b]
    return round(float(above.min() if len(above) else df.value.iloc[-1]), 2)


def alpha_explorer(table: pd.DataFrame) -> Explorer:
    """Slider over alpha on a precomputed interpolation table: accuracy on A and B at that mix. It opens at
    the crossing, where the mix starts to answer task A."""
    df = table[table.kind == "alpha"].reset_index(drop=True)
    slider = w.SelectionSlider(options=[round(v, 2) for v in df.value], value=crossing(table),
                               description="α", continuous_update=False)
    note, figure = w.HTML(), w.Output()
    a, b = df.task_a.iloc[0], df.task_b.iloc[0]

    def redraw(_=None):
        row = df.iloc[(df.value - slider.value).abs().argmin()]
        note.value = (f"α = {slider.value}: accuracy on {a} <b>{row.acc_a:.2f}</b>, on {b} <b>{row.acc_b:.2f}</b> "
                      f"({row.n} test queries; θs averaged over dev episodes)")
        fig = plots.interpolation_curves(table)
        fig.add_vline(x=slider.value, line_dash="dash")
        _show(figure, fig)

    slider.observe(redraw, "value")
    redraw()
    return Explorer([slider, note, figure])


class _Busy:
    """The busy state of a widget that runs the model: while `run` computes, the controls are disabled and the
    status line says what is running; then it says what was done and how long it took. Results are kept by
    key, so a setting already run (or run when the cell ran) shows again at once. `stored` holds results
    computed in advance (key -> result, on `n` episodes), shown at once without running anything."""

    def __init__(self, controls, stored: dict | None = None, n: int | None = None):
        self.controls = list(controls)
        self.status = w.HTML()
        self.cache: dict = {}
        self.stored = stored or {}
        self.n = n

    def ready(self, key) -> bool:
        """Whether `key` shows without running the model (stored, or run before)."""
        return key in self.stored or key in self.cache

    def say(self, text: str, busy: bool = False) -> None:
        css = "tv-status tv-busy" if busy else "tv-status"
        icon = "⏳ " if busy else ""
        self.status.value = f"<span class='{css}' style='color:#555'>{icon}{html.escape(text)}</span>"

    def compute(self, key, fn):
        """fn() once per key (timed), kept; returns (result, seconds it took, whether it ran now)."""
        if key in self.cache:
            result, seconds = self.cache[key]
            return result, seconds, False
        start = time.perf_counter()
        result = fn()
        self.cache[key] = result, time.perf_counter() - start
        return result, self.cache[key][1], True

    def run(self, key, fn, what: str, show, label: str | None = None) -> None:
        """Show the result for `key` with `show(result)`: the stored one (the status says "<label>: stored
        run, n episodes"), else fn()'s, computed now (busy state on) or kept from before."""
        if key in self.stored:
            show(self.stored[key])
            self.say(f"{label or what}: stored run, {self.n} episodes")
            return
        if key not in self.cache:
            for control in self.controls:
                control.disabled = True
            self.say(f"running {what}…", busy=True)
        try:
            result, seconds, ran = self.compute(key, fn)
        except Exception:
            self.say(f"{what}: failed")
            raise
        finally:
            for control in self.controls:
                control.disabled = False
        show(result)
        self.say(f"{what}: {'ran in' if ran else 'shown from the earlier run, which took'} {seconds:.1f} s")

    def wire(self, key, fn, what, label, show, out: w.Output, button: w.Button):
        """Connect a widget: `button` runs the current setting (`key()`, `what()` and `label()` read the
        controls); the opening setting is run now unless stored, so the first Run shows at once. Returns the
        handler for the controls' changes: a setting that is ready shows at once, a new one waits for Run."""
        def go(_=None):
            self.run(key(), fn, what(), show, label())

        def changed(_=None):
            if self.ready(key()):
                go()
            else:
                _show(out)
                self.say(f"press Run to run {what()}")

        if key() in self.stored:
            self.say(f"press Run to see {label()} (stored run, {self.n} episodes)")
        else:
            _, seconds, _ = self.compute(key(), fn)
            self.say(f"press Run to see {what()} (run when this cell ran, in {seconds:.1f} s)")
        button.on_click(go)
        return changed


def icl_playground(model, task_names, n: int = 10, start: str | None = None) -> Explorer:
    """Pick a task (opening at `start` where offered, else the first) and a number of demonstrations: see one
    prompt, the model's answer and the accuracy over n episodes, with and without the demonstrations.

    A setting in the model's stored playground table (`icl.stored_examples`: every task and number of
    demonstrations of the default model, on 10 episodes) shows at once. Any other is run: the opening one when
    the widget is built, so its first Run shows at once, the others on Run; every setting run is kept, so going
    back to one redraws without running the model."""
    task = w.Dropdown(options=list(task_names), value=_opening(task_names, start), description="task")
    k = w.IntSlider(value=5, min=min(icl.PLAYGROUND_KS), max=max(icl.PLAYGROUND_KS), description="demos",
                    continuous_update=False)
    run = w.Button(description="Run", button_style="primary")
    out = w.Output()
    busy = _Busy([task, k, run], icl.stored_examples(model.name, n), n)

    def label():
        return f"{task.value} with {k.value} demonstration{'s' if k.value != 1 else ''}"

    def what():
        return f"{n} episodes of {label()}"

    def compute():
        return icl.icl_example(model, task.value, k.value, n)

    def show(r):
        _show(out, HTML(f"<pre class='tv-prompt'>{html.escape(r['prompt'])}</pre>"
                        f"<p>model's answer: <b class='tv-answer'>{html.escape(r['answer'])}"
                        f"</b> (expected {html.escape(r['expected'])})</p>"
                        f"<p>accuracy over {n} episodes: ICL <b>{r['icl_accuracy']:.2f}</b>, "
                        f"zero-shot <b>{r['zero_shot_accuracy']:.2f}</b></p>"))

    changed = busy.wire(lambda: (task.value, k.value), compute, what, label, show, out, run)
    task.observe(changed, "value")
    k.observe(changed, "value")
    return Explorer([w.HBox([task, k, run]), busy.status, out])


EXAMPLE_TASK = """Apple -> Red
Lime -> Green
Banana -> Yellow
Grass -> Green
Blood -> Red
Sky -> Blue
Snow -> White
Coal -> Black"""
EXAMPLE_QUERIES = "Corn, Cherry, Ocean"


def custom_task_widget(model, layer: int) -> Explorer:
    """Type `input -> output` lines, build theta from them, and answer new queries with `x ->` + theta. The
    example pairs are run when the widget is built, so their first run shows at once."""
    pairs_box = w.Textarea(value=EXAMPLE_TASK, description="pairs", layout=w.Layout(width="420px", height="170px"))
    queries_box = w.Text(value=EXAMPLE_QUERIES, description="queries")
    run = w.Button(description="Build θ and answer", button_style="primary", layout=w.Layout(width="200px"))
    out = w.Output()
    busy = _Busy([pairs_box, queries_box, run])

    def key():
        return pairs_box.value.strip(), queries_box.value.strip()

    def compute():
        try:
            return icl.own_task_answers(model, pairs_box.value, queries_box.value, layer)
        except ValueError as e:
            return e

    def show(result):
        if isinstance(result, ValueError):
            _show(out, HTML(f"<p class='tv-error' style='color:#b00'>{html.escape(str(result))}</p>"))
            return
        table, info = result
        _show(out, HTML(f"<p>θ: {len(info['demos'])} demonstrations, averaged over the dummy queries "
                        f"{', '.join(html.escape(d) for d in info['dummies'])}.</p>"),
              _table_html(table, "tv-custom-table"))

    def go(_=None):
        n_queries = len([q for q in queries_box.value.split(",") if q.strip()])
        busy.run(key(), compute, f"θ from your pairs at layer {layer}, {n_queries} queries", show)

    _, seconds, _ = busy.compute(key(), compute)
    busy.say(f"press the button to build θ from these pairs (the example ran when this cell ran, in {seconds:.1f} s)")
    run.on_click(go)
    return Explorer([pairs_box, queries_box, run, busy.status, out])


def conflict_widget(model, n: int = 10, layer: int | None = None, start=("en_es", "en_fr")) -> Explorer:
    """Pick task A (the demonstrations) and task B (the patched theta), press Run: accuracy on A's and B's
    answers with plain ICL and with theta(B) patched in (the table of `conflict.conflicting_tasks` with
    override=False on n episodes, computed by `conflict.conflict_pair`). A pair in the model's stored widget
    table (`conflict.stored_pairs`: every pair offered, for the default model on 10 episodes at B's best layer)
    shows at once. Any other is run: the opening pair when the widget is built, the others on Run; each pair
    run, and each B's dev sweep (which sets B's layer), is kept."""
    from .tasks import TASK_NAMES

    sources = [t for t in TASK_NAMES if conflict.conflict_partners(t)]
    full_labels = {"description_width": "initial"}  # the default width cuts "task A (demos)" short
    a = w.Dropdown(options=sources, value=start[0], description="task A (demos)", style=full_labels)
    b = w.Dropdown(options=conflict.conflict_partners(start[0]), value=start[1], description="task B (θ)",
                   style=full_labels)
    run = w.Button(description="Run", button_style="primary")
    out = w.Output()
    busy = _Busy([a, b, run], conflict.stored_pairs(model.name, n) if layer is None else {}, n)
    sweeps: dict = {}  # task B -> its dev sweep, shared by every A it is paired with

    def label():
        return f"{a.value} with θ({b.value})"

    def what():
        return f"{n} episodes of {label()}"

    def compute():
        pair = a.value, b.value
        try:
            conflict.shared_queries(*pair, KIT, n)  # too few shared inputs: say so before any sweep
            if pair[1] not in sweeps:
                sweeps[pair[1]] = conflict.b_dev_sweep(model, pair[1], n)
            return conflict.conflict_pair(model, *pair, n=n, layer=layer, b_sweep=sweeps[pair[1]])
        except (KeyError, ValueError) as e:
            return e

    def show(table):
        if isinstance(table, Exception):
            _show(out, HTML(f"<p class='tv-error' style='color:#b00'>{html.escape(str(table))}</p>"))
            return
        followed = conflict.followed_task(table, a.value, b.value)
        _show(out, _table_html(table[["method", "layer", "acc_a", "acc_b"]], "tv-conflict-table"),
              HTML(f"<p>with θ({html.escape(b.value)}) patched over demonstrations of {html.escape(a.value)}, "
                   f"the model follows <b class='tv-followed'>{html.escape(followed)}</b></p>"),
              plots.conflict_bars(table))

    def partners(_=None):
        b.options = conflict.conflict_partners(a.value)

    changed = busy.wire(lambda: (a.value, b.value), compute, what, label, show, out, run)
    a.observe(partners, "value")  # first: A's new partners, then the pair's result
    a.observe(changed, "value")
    b.observe(changed, "value")
    return Explorer([w.HBox([a, b, run]), busy.status, out])


def _opening(options, start):
    """The option an explorer opens on: `start` where it is offered (a live run may hold other tasks), else the
    first."""
    options = list(options)
    return start if start in options else options[0]


def _with_interval(row, column: str) -> str:
    """An accuracy as text, with its 95% interval when the table has one: "0.76 [0.62, 0.86]"."""
    if f"{column}_lo" not in row:
        return f"{row[column]:.2f}"
    return f"{row[column]:.2f} [{row[column + '_lo']:.2f}, {row[column + '_hi']:.2f}]"


def results_explorer(results: pd.DataFrame, per_layer: pd.DataFrame, start: str | None = None) -> Explorer:
    """Pick a task (opening at `start` where offered, else the first): its Baseline / ICL / task-vector accuracy and its
    accuracy per layer (precomputed)."""
    task = w.Dropdown(options=list(results["task"]), value=_opening(results["task"], start), description="task")
    note, figure = w.HTML(), w.Output()

    def redraw(_=None):
        row = results[results.task == task.value].iloc[0]
        verdict = f"; task vector vs ICL: {row.tv_vs_icl}" if "tv_vs_icl" in row else ""
        note.value = (f"<span class='tv-result'><b>{row.task}</b> ({row.category}), test episodes: baseline "
                      f"{_with_interval(row, 'baseline')}, ICL {_with_interval(row, 'icl')}, task vector "
                      f"{_with_interval(row, 'tv')} at layer {row.best_layer} (chosen on dev){verdict}</span>")
        _show(figure, plots.layer_curves(per_layer[per_layer.task == task.value], highlight=int(row.best_layer),
                                         title=f"{task.value}: task-vector accuracy by layer (dev episodes)"))

    task.observe(redraw, "value")
    redraw()
    return Explorer([task, note, figure])


def vector_explorer(run) -> Explorer:
    """Pick a task (or all of them) in a function-vector comparison (`function_vectors.Comparison`): its test
    accuracies, dev accuracy per layer of the task vector and the function vector, and every head's indirect
    effect on it with the function vector's heads outlined."""
    task = w.Dropdown(options=["all tasks"] + list(run.table.task), description="task")
    note, curves, heatmap = w.HTML(), w.Output(), w.Output()

    def redraw(_=None):
        one = task.value != "all tasks"
        pick = (lambda df: df[df.task == task.value]) if one else (lambda df: df)  # noqa: E731
        rows = pick(run.table)
        name = task.value if one else f"mean over {len(rows)} tasks"
        layers = (f" (task vector at layer {rows.tv_layer.iloc[0]}, function vector at layer {rows.fv_layer.iloc[0]})"
                  if one else "")
        note.value = (f"<span class='tv-fv-note'><b>{html.escape(name)}</b>: test accuracy ICL {rows.icl.mean():.2f}, "
                      f"task vector {rows.tv.mean():.2f}, function vector {rows.fv.mean():.2f}{layers}</span>")
        _show(curves, plots.vector_layer_curves(pick(run.per_layer), f"{name}: dev accuracy by layer"))
        _show(heatmap, plots.head_heatmap(pick(run.effects), run.heads,
                                          f"{name}: indirect effect of each head (the {run.k} FV heads outlined)"))

    task.observe(redraw, "value")
    redraw()
    return Explorer([task, note, curves, heatmap])
