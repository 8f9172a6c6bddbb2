"""The notebooks as a student sees them: JupyterLab 4 driven by Debian's Chromium (Playwright).

JupyterLab runs from a temporary copy of notebooks/ on a free loopback port with a fresh token; the
committed notebooks are never touched. Screenshots go to test-output/browser/.
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
CELL_TIMEOUT_MS = 240_000


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
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        # a workspace of its own, so JupyterLab does not reopen the tabs of the previous test
        page.goto(f"{base}/lab/workspaces/{name}/tree/{name}.ipynb?token={token}", timeout=120_000)
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle'], "
                               "[data-status='idle']", timeout=120_000, state="attached")
        page.click(".jp-NotebookPanel .jp-Cell >> nth=0")
        page.keyboard.press("Escape")
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        # every code cell done: no cell shows the running marker [*]
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


def _shot(page, name: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def test_layer_slider_updates_figure_and_table(browser, lab):
    with _run_all(browser, lab, "03_layer_sweep") as page:
        explorer = _widget(page, "03_layer_sweep", ".tv-layer-table")

        def state():
            title = explorer.locator(".gtitle").first.text_content()
            return (explorer.locator(".tv-layer-acc").first.text_content(),
                    explorer.locator(".tv-layer-table tbody tr").first.inner_text(), title)

        before = state()
        before_layer = int(re.search(r"layer (\d+)", before[2]).group(1))
        handle = explorer.locator(".widget-slider .noUi-handle").first
        handle.focus()
        for _ in range(3):
            page.keyboard.press("ArrowLeft")
        expected = before_layer - 3
        expect(explorer.locator(".tv-layer-acc").first.locator("xpath=..")).to_contain_text(
            f"layer {expected}", timeout=30_000)
        expect(explorer.locator(".gtitle").first).to_contain_text(f"layer {expected} marked", timeout=30_000)
        after = state()
        after_layer = int(re.search(r"layer (\d+)", after[2]).group(1))
        assert after_layer == before_layer - 3, (before, after)
        assert after[0] != before[0] or after[1] != before[1], "the per-task table did not change with the slider"
        _shot(page, "03_layer_sweep")


def test_results_dropdown_switches_task(browser, lab):
    with _run_all(browser, lab, "02_task_vectors") as page:
        explorer = _widget(page, "02_task_vectors", ".tv-result")
        note, title = explorer.locator(".tv-result"), explorer.locator(".gtitle").first
        select = explorer.locator("select").first
        current = select.input_value()
        expect(note).to_contain_text(current)
        expect(title).to_contain_text(f"{current}:")
        before = note.inner_text()
        other = next(o for o in select.locator("option").all_text_contents() if o != current)
        select.select_option(other)
        expect(note).to_contain_text(other, timeout=30_000)
        expect(title).to_contain_text(f"{other}:", timeout=30_000)
        assert note.inner_text() != before, "the result line did not change with the dropdown"
        _shot(page, "02_task_vectors")


def test_custom_task_text_area_answers_typed_queries(browser, lab):
    with _run_all(browser, lab, "07_beyond") as page:
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
