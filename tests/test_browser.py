"""The notebooks as a student sees them: JupyterLab 4 driven by Debian's Chromium (Playwright).

Every notebook is run top to bottom in a 1280-px window with the file browser open; the test asserts no
error, no stderr output and no widget error, that every figure fits its output area, and that one
interaction changes the output; 02's and 03's explorers are checked again after a page reload. It records that interaction's latency (input -> changed output, measured
in the page) in test-output/browser/latency.json, without asserting on it (timings belong to benchmarks),
and saves a screenshot of the widget. JupyterLab runs from a temporary copy of notebooks/ on a free
loopback port with a fresh token; the committed notebooks are never touched.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic"]
WIDGET_ERRORS = ("Error displaying widget", "Model not found")
CELL_TIMEOUT_MS = 600_000  # a whole notebook; generous, as a loaded 2-core machine can be 3x slower


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server over a copy of the notebooks; stopped (whole process group) even on failure."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is missing at {CHROMIUM}: run scripts/setup.sh (apt-get install chromium)")
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    settings = root / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no "get notified about Jupyter news?" toast over the screenshots
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    notebook = root / "settings" / "@jupyterlab" / "notebook-extension"
    notebook.mkdir(parents=True)  # every cell in the DOM, so every figure can be measured (no virtual scrolling)
    (notebook / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    port, token = _free_port(), secrets.token_hex(16)
    log = open(root / "jupyter.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root / 'notebooks'}",
         "--ServerApp.open_browser=False", f"--LabApp.user_settings_dir={root / 'settings'}",
         f"--LabApp.workspaces_dir={root / 'workspaces'}", "--allow-root"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited: {(root / 'jupyter.log').read_text()[-2000:]}")
                time.sleep(1)
        else:
            raise RuntimeError("jupyter lab did not answer in 120 s")
        yield base, token
    finally:
        _stop(proc)
        log.close()


def _stop(proc):
    """Stop the server and everything it started (kernels): its whole process group."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def _run_all(browser, lab, name: str):
    """Open notebook `name` in JupyterLab, run all cells and wait until every one has finished; afterwards
    close the page and shut its kernel down, so the next notebook does not compete with it."""
    base, token = lab
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        # a workspace of its own, so JupyterLab does not reopen the tabs of the previous test
        page.goto(f"{base}/lab/workspaces/{name}/tree/{name}.ipynb?token={token}", timeout=120_000)
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
        if not page.locator("#jp-left-stack").is_visible():  # the file browser open, as a student has it
            page.locator("[data-id='filebrowser']").first.click()
        expect(page.locator("#jp-left-stack")).to_be_visible()
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle'], "
                               "[data-status='idle']", timeout=120_000, state="attached")
        page.click(".jp-NotebookPanel .jp-Cell >> nth=0")
        page.keyboard.press("Escape")
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        # the run has started (a committed notebook already shows numbered prompts, so waiting only for "no [*]"
        # could pass before the kernel picks the cells up), then every code cell is done: no [*] is left
        page.wait_for_function("() => [...document.querySelectorAll('.jp-InputPrompt')]"
                               ".some(e => e.textContent.includes('*'))", timeout=120_000, polling="raf")
        page.wait_for_function(
            """() => { const p = [...document.querySelectorAll('.jp-InputPrompt')].map(e => e.textContent);
                       return p.length > 0 && p.every(t => !t.includes('*')) && p.some(t => /\\d/.test(t)); }""",
            timeout=CELL_TIMEOUT_MS)
        yield page
    finally:
        page.close()
        with suppress(OSError):  # a server that died is reported by the test; the fixture kills what is left
            _shutdown_kernels(base, token)


def _shutdown_kernels(base: str, token: str):
    sessions = json.load(urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10))
    for session in sessions:
        request = urllib.request.Request(f"{base}/api/sessions/{session['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(request, timeout=30)


def _widget(page, name: str, marker: str):
    """The innermost widget box holding `marker`, scrolled into view, once the notebook shows no errors."""
    box = page.locator(".widget-vbox", has=page.locator(marker)).last
    box.scroll_into_view_if_needed(timeout=60_000)
    _assert_no_widget_errors(page, name)
    return box


def _assert_no_widget_errors(page, name: str):
    text = page.inner_text(".jp-NotebookPanel")
    for error in WIDGET_ERRORS:
        assert error not in text, f"{name}: {error!r} shown in the notebook"
    assert "Traceback" not in text, f"{name}: a cell raised: {text[text.find('Traceback'):][:800]}"


def _assert_clean_run(page, name: str):
    """No cell wrote to stderr, and every figure (each one scrolled into view, so it is drawn) is at most as
    wide as its output area."""
    stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert stderr.count() == 0, f"{name}: stderr output: {stderr.first.inner_text()[:500]}"
    # a figure's output element is the plot itself, or holds it (an explorer's Output widget)
    figures = page.locator(".jp-OutputArea-output.js-plotly-plot, .jp-OutputArea-output .js-plotly-plot")
    for i in range(figures.count()):
        figures.nth(i).scroll_into_view_if_needed(timeout=30_000)
        expect(figures.nth(i).locator(".svg-container").first).to_be_visible(timeout=30_000)
    too_wide = page.evaluate("""() => [...document.querySelectorAll(
            '.jp-OutputArea-output.js-plotly-plot, .jp-OutputArea-output .js-plotly-plot')]
        .map(plot => ({figure: plot.querySelector('.svg-container').getBoundingClientRect().width,
                       area: plot.closest('.jp-OutputArea-output').getBoundingClientRect().width,
                       title: (plot.querySelector('.gtitle') || {}).textContent || '(untitled)'}))
        .filter(f => f.figure > f.area + 1)""")
    assert not too_wide, f"{name}: figures wider than their output area: {too_wide}"
    assert figures.count() >= 1, f"{name}: no figure was drawn"


def _timed(page, act, done: str, timeout_ms: int = 30_000) -> float:
    """Milliseconds from just before `act()` to the first animation frame where the JS condition `done`
    holds (both times taken in the page)."""
    page.evaluate("() => { window.__tvStart = performance.now(); window.__tvEnd = undefined; }")
    act()
    page.wait_for_function(f"""() => {{ if (!({done})) return false;
        window.__tvEnd = window.__tvEnd || performance.now(); return true; }}""", polling="raf", timeout=timeout_ms)
    return page.evaluate("() => window.__tvEnd - window.__tvStart")


def _record_latency(name: str, widget: str, ms: float):
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / "latency.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    table[name] = {"widget": widget, "ms": round(ms)}
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"{name}: {widget} responded in {ms:.0f} ms")


def _shot(page, name: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def _text(selector: str, needle: str) -> str:
    """JS condition: some element matching `selector` shows `needle` (JSON-quoted)."""
    return (f"[...document.querySelectorAll({json.dumps(selector)})]"
            f".some(e => e.textContent.includes({json.dumps(needle)}))")


def _reloaded(page, name: str, marker: str, title: str):
    """Save (as JupyterLab's autosave would), then reload the page while the kernel runs: the explorer is drawn
    again from the kernel's widget state, its figure with its traces and the title of the state it was left in
    (not empty axes)."""
    page.click(".jp-NotebookPanel .jp-Cell >> nth=0")
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=60_000)
    page.reload(timeout=120_000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
    box = _widget(page, name, marker)
    expect(box.locator(".gtitle").first).to_contain_text(title, timeout=60_000)
    assert box.locator(".js-plotly-plot .scatterlayer .trace").count() > 0, f"{name}: no traces after a reload"
    return box


def test_01_icl_playground_runs_a_task(browser, lab):
    with _run_all(browser, lab, "01_icl_basics") as page:
        box = _widget(page, "01_icl_basics", "button:has-text('Run')")
        _assert_clean_run(page, "01_icl_basics")
        box.locator("select").first.select_option("country_capital")
        ms = _timed(page, lambda: box.get_by_role("button", name="Run").click(), _text(".tv-answer", ""))
        expect(box.locator(".tv-prompt")).to_contain_text("example:")
        _record_latency("01_icl_basics", "ICL playground (runs the model on 10 episodes)", ms)
        _shot(page, "01_icl_basics")


def test_02_results_dropdown_switches_task(browser, lab):
    with _run_all(browser, lab, "02_task_vectors") as page:
        explorer = _widget(page, "02_task_vectors", ".tv-result")
        _assert_clean_run(page, "02_task_vectors")
        note, title = explorer.locator(".tv-result"), explorer.locator(".gtitle").first
        select = explorer.locator("select").first
        current = select.input_value()
        expect(note).to_contain_text(current)
        expect(title).to_contain_text(f"{current}:")
        before = note.inner_text()
        other = next(o for o in select.locator("option").all_text_contents() if o != current)
        ms = _timed(page, lambda: select.select_option(other), _text(".gtitle", f"{other}:"))
        expect(note).to_contain_text(other)
        assert note.inner_text() != before, "the result line did not change with the dropdown"
        _record_latency("02_task_vectors", "results explorer (task dropdown)", ms)
        _shot(page, "02_task_vectors")
        explorer = _reloaded(page, "02_task_vectors", ".tv-result", f"{other}:")
        explorer.locator("select").first.select_option(current)  # and it still answers after the reload
        expect(explorer.locator(".gtitle").first).to_contain_text(f"{current}:")


def test_03_layer_slider_updates_figure_and_table(browser, lab):
    with _run_all(browser, lab, "03_layer_sweep") as page:
        explorer = _widget(page, "03_layer_sweep", ".tv-layer-table")
        _assert_clean_run(page, "03_layer_sweep")

        def state():
            return (explorer.locator(".tv-layer-acc").first.text_content(),
                    explorer.locator(".tv-layer-table tbody tr").first.inner_text(),
                    explorer.locator(".gtitle").first.text_content())

        before = state()
        layer = int(re.search(r"layer (\d+)", before[2]).group(1))
        handle = explorer.locator(".widget-slider .noUi-handle").first
        handle.focus()
        ms = _timed(page, lambda: page.keyboard.press("ArrowLeft"), _text(".gtitle", f"layer {layer - 1} marked"))
        expect(explorer.locator(".tv-layer-acc").first.locator("xpath=..")).to_contain_text(f"layer {layer - 1}")
        after = state()
        assert after[0] != before[0] or after[1] != before[1], "the per-task table did not change with the slider"
        _record_latency("03_layer_sweep", "layer explorer (slider)", ms)
        _shot(page, "03_layer_sweep")
        explorer = _reloaded(page, "03_layer_sweep", ".tv-layer-table", f"layer {layer - 1} marked")
        explorer.locator(".widget-slider .noUi-handle").first.focus()
        page.keyboard.press("ArrowLeft")  # the plot, not only the title and the table, follows the slider
        expect(explorer.locator(".gtitle").first).to_contain_text(f"layer {layer - 2} marked")
        assert explorer.locator(".js-plotly-plot .scatterlayer .trace").count() > 0


def test_04_geometry_layer_dropdown_redraws(browser, lab):
    with _run_all(browser, lab, "04_geometry") as page:
        explorer = _widget(page, "04_geometry", "select")
        _assert_clean_run(page, "04_geometry")
        select = explorer.locator("select").first
        current = select.input_value()
        expect(explorer.locator(".gtitle").first).to_contain_text(f"layer {current} ")
        other = next(o for o in select.locator("option").all_text_contents() if o != current)
        ms = _timed(page, lambda: select.select_option(other), _text(".gtitle", f"at layer {other} "))
        expect(explorer).to_contain_text(f"layer {other}: kNN task identification")
        _record_latency("04_geometry", "geometry explorer (layer dropdown)", ms)
        _shot(page, "04_geometry")


def test_05_conflict_widget_runs_a_pair(browser, lab):
    with _run_all(browser, lab, "05_conflicting_tasks") as page:
        box = _widget(page, "05_conflicting_tasks", "button:has-text('Run')")
        _assert_clean_run(page, "05_conflicting_tasks")
        ms = _timed(page, lambda: box.get_by_role("button", name="Run").click(), _text(".tv-followed", ""),
                    timeout_ms=120_000)
        followed = box.locator(".tv-followed").inner_text()
        assert followed in ("antonyms", "present_simple_past_simple")
        expect(box.locator(".js-plotly-plot")).to_be_visible()
        _assert_clean_run(page, "05_conflicting_tasks")  # the widget's own figure fits too
        _record_latency("05_conflicting_tasks", "conflict widget (runs the model on 10 episodes)", ms)
        _shot(page, "05_conflicting_tasks")


def test_06_vocab_slider_shows_other_layer(browser, lab):
    with _run_all(browser, lab, "06_vocabulary_projection") as page:
        explorer = _widget(page, "06_vocabulary_projection", ".tv-vocab-table")
        _assert_clean_run(page, "06_vocabulary_projection")
        header = explorer.locator(".tv-vocab-table thead").inner_text()
        layer = int(re.search(r"layer (\d+)", header).group(1))
        explorer.locator(".widget-slider .noUi-handle").first.focus()
        ms = _timed(page, lambda: page.keyboard.press("ArrowRight"),
                    _text(".tv-vocab-table thead", f"top tokens at layer {layer + 1}"))
        _record_latency("06_vocabulary_projection", "vocabulary explorer (slider)", ms)
        _shot(page, "06_vocabulary_projection")


def test_07_alpha_slider_and_own_task(browser, lab):
    with _run_all(browser, lab, "07_beyond") as page:
        explorer = _widget(page, "07_beyond", ".widget-html:has-text('α = ')")
        _assert_clean_run(page, "07_beyond")
        note = explorer.locator(".widget-html:has-text('α = ')").first
        alpha = re.search(r"α = ([0-9.]+)", note.inner_text()).group(1)
        explorer.locator(".widget-slider .noUi-handle").first.focus()
        ms = _timed(page, lambda: page.keyboard.press("ArrowLeft"),
                    f"!({_text('.widget-html', f'α = {alpha}:')})")
        _record_latency("07_beyond", "interpolation explorer (α slider)", ms)

        box = _widget(page, "07_beyond", ".widget-textarea")
        pairs = ["cat -> CAT", "dog -> DOG", "sun -> SUN", "red -> RED", "box -> BOX", "map -> MAP"]
        queries = ["pen", "cup"]
        box.locator(".widget-textarea textarea").fill("\n".join(pairs))
        box.locator(".widget-text:not(.widget-textarea) input").fill(", ".join(queries))
        box.get_by_role("button", name="Build θ and answer").click()
        table = box.locator(".tv-custom-table")
        expect(table).to_be_visible(timeout=120_000)
        # theta came from the typed pairs: their last two inputs are the dummy queries
        expect(box).to_contain_text("4 demonstrations, averaged over the dummy queries box, map")
        rows = table.locator("tbody tr")
        assert [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())] == queries
        _shot(page, "07_beyond")


def test_08_vector_explorer_switches_task(browser, lab):
    with _run_all(browser, lab, "08_function_vectors") as page:
        explorer = _widget(page, "08_function_vectors", ".tv-fv-note")
        _assert_clean_run(page, "08_function_vectors")
        note, select = explorer.locator(".tv-fv-note"), explorer.locator("select").first
        explorer.scroll_into_view_if_needed()
        expect(note).to_contain_text("mean over")
        ms = _timed(page, lambda: select.select_option("en_es"), _text(".gtitle", "en_es: dev accuracy by layer"))
        expect(note).to_contain_text("en_es")
        expect(explorer.locator(".gtitle").nth(1)).to_contain_text("en_es: indirect effect")
        _record_latency("08_function_vectors", "vector explorer (task dropdown)", ms)
        _shot(page, "08_function_vectors")
