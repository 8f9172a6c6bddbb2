"""The notebooks as a student sees them: JupyterLab 4 driven by Debian's Chromium (Playwright).

Every notebook is run top to bottom in a 1280-px window with the file browser open; the test asserts no
error, no stderr output and no widget error, that every figure fits its output area, and that one
interaction changes the output; 02's and 03's explorers are checked again after a page reload. It measures
each live widget's update latency in the page (from the control change to the new output), asserts that
every one is at most LIVE_LIMIT_MS, writes the table to test-output/browser/latency.json and prints it at the
end, and saves a screenshot of the widget. The ICL playground and the conflict widget show every setting they
offer from a stored table (`python -m tv_utils widgets`), so a new setting is a redraw too; the own-task
widget takes free text, so new pairs run the model (batched, about half a second on 2 cores) behind a busy
state (controls disabled, a status line saying what runs), which the test checks appears.

JupyterLab runs from a temporary copy of notebooks/ on a free loopback port with a fresh token; the
committed notebooks are never touched. It runs in a process group of its own and is sent SIGTERM when the
pytest process dies, however it dies (Linux's parent-death signal), and its kernels exit when it does;
test_killed_pytest_leaves_no_lab checks that with a SIGKILLed pytest.
"""

import difflib
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

import nbformat
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic"]
WIDGET_ERRORS = ("Error displaying widget", "Model not found")
CELL_TIMEOUT_MS = 600_000  # a whole notebook; generous, as a loaded 2-core machine can be 3x slower
CHECKED = "# NBVAL_CHECK_OUTPUT"  # marks a cell whose printed text must reproduce the committed one
LIVE_LIMIT_MS = 1000  # a live widget's update, from the control change to the new output
HOLD = "TV_BROWSER_HOLD_LAB"  # set by test_killed_pytest_leaves_no_lab for the pytest it kills
LATENCY: dict = {}  # this run's measurements, printed as a table at the end of the module


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
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with(os.getpid()),
        env={**os.environ, "PYTHONPATH": str(ROOT)})
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
        yield base, token, root / "notebooks"
    finally:
        _stop(proc)
        log.close()


def _die_with(parent: int):
    """A preexec_fn: the child gets SIGTERM when this (pytest) thread dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG); if the parent is already gone by then, it ends at once. JupyterLab stops on SIGTERM
    and shuts its kernels down; a kernel also exits by itself when its server is gone (ipykernel's parent
    poller)."""

    def preexec():
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _stop(proc):
    """Stop the server and its process group. Kernels run in sessions of their own: SIGTERM makes the server
    shut them down, and a kernel whose server is gone exits by itself."""
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
    """Open notebook `name` in JupyterLab, run all cells and wait until every one has finished, then save it and
    check its checked cells' text against the committed notebook; afterwards close the page and shut its kernel
    down, so the next notebook does not compete with it."""
    base, token, folder = lab
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
        _save(page)
        _assert_checked_outputs(folder / f"{name}.ipynb", ROOT / "notebooks" / f"{name}.ipynb")
        yield page
    finally:
        page.close()
        with suppress(OSError):  # a server that died is reported by the test; the fixture kills what is left
            _shutdown_kernels(base, token)


def _save(page):
    """Save the notebook (Ctrl+S, as JupyterLab's autosave would) and wait until it is saved."""
    page.click(".jp-NotebookPanel .jp-Cell >> nth=0")
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=60_000)


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def _assert_checked_outputs(ran: Path, committed: Path):
    """Cells marked CHECKED (accuracy tables, top tokens, the exercises' pipelines) printed, in this run, exactly
    the text committed with them; other outputs (widget ids, timings, plot JSON) legitimately vary."""
    fresh = {c.get("id"): c for c in nbformat.read(ran, as_version=4).cells}
    checked = [c for c in nbformat.read(committed, as_version=4).cells
               if c.cell_type == "code" and CHECKED in c.source]
    assert checked, f"{committed.name}: no cell marked {CHECKED}"
    diffs = ["\n".join(difflib.unified_diff(_stdout(c).splitlines(), _stdout(fresh[c.id]).splitlines(),
                                            f"committed, cell {c.id}", "this run", lineterm=""))
             for c in checked if _stdout(c) != _stdout(fresh[c.id])]
    assert not diffs, f"{committed.name}: {len(diffs)} checked cells printed other text:\n" + "\n".join(diffs)[:6000]


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


def _record_latency(name: str, widget: str, ms: float, runs_model: bool = False):
    """Record one update's latency (in test-output/browser/latency.json and this run's table, with whether it
    ran the model) and assert it is at most LIVE_LIMIT_MS."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / "latency.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    key = f"{name}: {widget}"
    table[key] = LATENCY[key] = {"notebook": name, "widget": widget, "ms": round(ms), "runs_model": runs_model}
    path.write_text(json.dumps(table, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"{name}: {widget} responded in {ms:.0f} ms")
    assert ms <= LIVE_LIMIT_MS, f"{name}: {widget} took {ms:.0f} ms (limit {LIVE_LIMIT_MS} ms)"


@pytest.fixture(scope="module", autouse=True)
def latency_table(request):
    """Print this run's latencies as a table once the module's tests are done (also with -q or captured)."""
    yield
    if not LATENCY:
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    width = max(len(k) for k in LATENCY)
    lines = ["", f"{'live widget update':{width}}  {'ms':>6}  limit"]
    for key, row in LATENCY.items():
        note = " (runs the model, busy state shown)" if row["runs_model"] else ""
        lines.append(f"{key:{width}}  {row['ms']:>6}  <= {LIVE_LIMIT_MS} ms{note}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else suppress():
        for line in lines:
            (reporter.write_line if reporter else print)(line)


def _timed_busy(page, box, act, done: str, timeout_ms: int = 30_000) -> float:
    """_timed for an update that runs the model: also asserts the busy state shows while it runs (a status
    line saying what runs, and the widget's buttons disabled)."""
    page.evaluate("() => { window.__tvStart = performance.now(); window.__tvEnd = undefined; }")
    act()
    page.wait_for_function("""() => [...document.querySelectorAll('.tv-busy')]
            .some(e => e.textContent.includes('running'))
        && [...document.querySelectorAll('.widget-button')].some(b => b.disabled)""", polling="raf", timeout=30_000)
    page.wait_for_function(f"""() => {{ if (!({done})) return false;
        window.__tvEnd = window.__tvEnd || performance.now(); return true; }}""", polling="raf", timeout=timeout_ms)
    expect(box.locator(".tv-busy")).to_have_count(0)
    assert box.locator("button:disabled").count() == 0, "controls still disabled after the run"
    return page.evaluate("() => window.__tvEnd - window.__tvStart")


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
    _save(page)
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
        run = box.get_by_role("button", name="Run")
        opening = box.locator("select").first.input_value()
        expect(box.locator(".tv-status")).to_contain_text("press Run")
        ms = _timed(page, run.click, _text(".tv-answer", ""))
        expect(box.locator(".tv-prompt")).to_contain_text("example:")
        expect(box.locator(".tv-status")).to_contain_text(f"{opening} with 5 demonstrations: stored run, 10 episodes")
        _record_latency("01_icl_basics", "ICL playground, Run on the opening setting", ms)

        # every task and number of demonstrations is stored: a new one shows at once, without Run
        ms = _timed(page, lambda: box.locator("select").first.select_option("country_capital"),
                    _text(".tv-status", "country_capital with 5 demonstrations: stored run, 10 episodes"))
        expect(box.locator(".tv-answer")).to_have_count(1)
        expect(box.locator(".tv-prompt")).to_contain_text("example:")
        _record_latency("01_icl_basics", "ICL playground, a new task (stored, 10 episodes)", ms)
        box.locator(".widget-slider .noUi-handle").first.focus()
        ms = _timed(page, lambda: page.keyboard.press("ArrowRight"),
                    _text(".tv-status", "country_capital with 6 demonstrations: stored run, 10 episodes"))
        assert box.locator(".tv-prompt").inner_text().count("->") == 7, "6 demonstrations and the query"
        _record_latency("01_icl_basics", "ICL playground, demonstrations slider (stored)", ms)

        ms = _timed(page, lambda: box.locator("select").first.select_option(opening),
                    _text(".tv-status", f"{opening} with 6 demonstrations: stored run"))
        expect(box.locator(".tv-prompt")).to_contain_text("example:")
        _record_latency("01_icl_basics", "ICL playground, task back to the opening one", ms)
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
        run = box.get_by_role("button", name="Run")
        expect(box.locator(".tv-status")).to_contain_text("press Run")
        ms = _timed(page, run.click, _text(".tv-followed", ""))
        followed = box.locator(".tv-followed").inner_text()
        assert followed in ("antonyms", "present_simple_past_simple")
        expect(box.locator(".js-plotly-plot")).to_be_visible()
        _assert_clean_run(page, "05_conflicting_tasks")  # the widget's own figure fits too
        _record_latency("05_conflicting_tasks", "conflict widget, Run on the opening pair", ms)
        _shot(page, "05_conflicting_tasks")

        task_b = box.locator("select").nth(1)
        opening = task_b.input_value()
        expect(box.locator(".tv-status")).to_contain_text(f"antonyms with θ({opening}): stored run, 10 episodes")
        # every pair the dropdowns offer is stored: a new one shows at once, without Run
        ms = _timed(page, lambda: task_b.select_option("en_fr"),
                    _text(".tv-status", "antonyms with θ(en_fr): stored run, 10 episodes"))
        expect(box.locator(".tv-followed")).to_have_count(1)
        expect(box.locator(".tv-conflict-table")).to_be_visible()
        _record_latency("05_conflicting_tasks", "conflict widget, a new pair (stored, 10 episodes)", ms)
        task_a = box.locator("select").first
        ms = _timed(page, lambda: task_a.select_option("country_capital"),  # B's list follows A
                    _text(".tv-status", "country_capital with θ(location_continent): stored run, 10 episodes"))
        expect(box.locator(".tv-followed")).to_have_count(1)
        _record_latency("05_conflicting_tasks", "conflict widget, a new task A (stored, 10 episodes)", ms)
        task_a.select_option("antonyms")
        ms = _timed(page, lambda: task_b.select_option(opening),
                    _text(".tv-status", f"antonyms with θ({opening}): stored run"))
        expect(box.locator(".tv-followed")).to_have_text(followed)
        _record_latency("05_conflicting_tasks", "conflict widget, pair back to the opening one", ms)


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
        button = box.get_by_role("button", name="Build θ and answer")
        ms = _timed(page, button.click, _text(".tv-custom-table", "Cherry"))
        _record_latency("07_beyond", "your own task, the example pairs", ms)
        pairs = ["cat -> CAT", "dog -> DOG", "sun -> SUN", "red -> RED", "box -> BOX", "map -> MAP"]
        queries = ["pen", "cup"]
        box.locator(".widget-textarea textarea").fill("\n".join(pairs))
        box.locator(".widget-text:not(.widget-textarea) input").fill(", ".join(queries))
        ms = _timed_busy(page, box, button.click, _text(".tv-custom-table", "pen"))
        _record_latency("07_beyond", "your own task, new pairs (runs the model)", ms, runs_model=True)
        table = box.locator(".tv-custom-table")
        expect(table).to_be_visible()
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


def _alive(pid: int) -> bool:
    """Whether process pid runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _pids_with(needle: str) -> list[int]:
    """Running processes whose command line holds `needle`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with suppress(OSError):
                if needle in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
    return [pid for pid in found if pid != os.getpid() and _alive(pid)]


def test_lab_held_for_the_kill_test(request):
    """Only inside test_killed_pytest_leaves_no_lab: start the lab fixture and a kernel, say so, and wait to
    be killed."""
    if not os.environ.get(HOLD):
        pytest.skip(f"runs only in the pytest that test_killed_pytest_leaves_no_lab kills ({HOLD} set)")
    base, token, _ = request.getfixturevalue("lab")
    request_ = urllib.request.Request(f"{base}/api/kernels?token={token}", data=b'{"name": "python3"}',
                                      method="POST", headers={"Content-Type": "application/json"})
    kernel = json.load(urllib.request.urlopen(request_, timeout=120))
    Path(os.environ[HOLD]).write_text(json.dumps({"port": base.rsplit(":", 1)[1], "kernel": kernel["id"]}))
    time.sleep(600)


def test_killed_pytest_leaves_no_lab(tmp_path):
    """SIGKILL a pytest that holds the lab fixture and a kernel (no teardown runs): the server and the kernel
    end too."""
    if os.environ.get(HOLD):
        pytest.skip("this is the pytest being killed")
    flag = tmp_path / "held.json"
    inner = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                              "-k", "test_lab_held_for_the_kill_test"], cwd=ROOT, env={**os.environ, HOLD: str(flag)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pids: list[int] = []
    try:
        for _ in range(300):
            if flag.exists() or inner.poll() is not None:
                break
            time.sleep(0.5)
        assert flag.exists(), f"the inner pytest did not start a lab and a kernel (exit code {inner.poll()})"
        held = json.loads(flag.read_text())
        server, kernel = _pids_with(f"--port={held['port']}"), _pids_with(f"kernel-{held['kernel']}.json")
        pids = server + kernel
        assert server and kernel, f"server {server} or kernel {kernel} not found running"
        inner.kill()  # SIGKILL: no fixture teardown, no atexit
        inner.wait(timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.5)
        left = [pid for pid in pids if _alive(pid)]
        assert not left, f"still running after pytest was killed: {left} (server {server}, kernel {kernel})"
    finally:
        if inner.poll() is None:
            inner.kill()
        for pid in pids:
            if _alive(pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
