"""The notebooks as a student sees them: JupyterLab 4 driven by Debian's Chromium (Playwright).

JupyterLab runs from a temporary copy of notebooks/ on a free loopback port with a fresh token; the
committed notebooks are never touched. Screenshots go to test-output/browser/.
"""

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
    port, token = _free_port(), secrets.token_hex(16)
    log = open(root / "jupyter.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root / 'notebooks'}",
         "--ServerApp.open_browser=False", "--LabApp.news_url=", "--allow-root"],
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


def _open_and_run_all(browser, lab, name: str):
    base, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/lab/tree/{name}.ipynb?token={token}", timeout=120_000)
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
    return page


def _assert_no_widget_errors(page, name: str):
    text = page.inner_text(".jp-NotebookPanel")
    for error in WIDGET_ERRORS:
        assert error not in text, f"{name}: {error!r} shown in the notebook"
    assert "Traceback" not in text, f"{name}: a cell raised: {text[text.find('Traceback'):][:800]}"


def _shot(page, name: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def test_layer_slider_updates_figure_and_table(browser, lab):
    page = _open_and_run_all(browser, lab, "03_layer_sweep")
    try:
        page.wait_for_selector(".tv-layer-table", timeout=60_000)
        _assert_no_widget_errors(page, "03_layer_sweep")
        explorer = page.locator(".widget-vbox", has=page.locator(".tv-layer-acc")).last
        explorer.scroll_into_view_if_needed()

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
    finally:
        page.close()
