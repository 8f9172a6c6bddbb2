"""A built wheel ships the committed result tables, and the kit installed from it reads them from there."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tv_utils import store

ROOT = Path(__file__).resolve().parent.parent
TABLES = (".csv", ".csv.gz", ".json", ".safetensors")  # what the notebooks read; the PNG and HTML figures stay out


def test_installed_wheel_finds_the_committed_results(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "tv_utils", source / "tv_utils", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "figures", source / "figures")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source], check=True)
    wheel, = (tmp_path / "dist").glob("tv_utils-*.whl")
    shipped = sorted(n.removeprefix("tv_utils/results/") for n in zipfile.ZipFile(wheel).namelist()
                     if n.startswith("tv_utils/results/"))
    assert shipped == sorted(p.name for p in (ROOT / "figures").iterdir() if p.name.endswith(TABLES))

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel], check=True)
    probe = ("import json, tv_utils.store as s; t = s.precomputed('reproduce_gemma3-270m_results'); "
             "print(json.dumps([s.__file__, s.INSTALLED, str(s.FIGURES), str(s.results_folder()), t.to_csv()]))")
    env = {k: v for k, v in os.environ.items() if k != "TV_UTILS_RESULTS"} | {"PYTHONPATH": str(site)}
    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True, check=True)
    module, installed, figures, results_folder, table = json.loads(out.stdout)
    assert Path(module).is_relative_to(site) and installed
    assert Path(figures) == site / "tv_utils" / "results"
    assert Path(results_folder) == Path("results")  # new results go to ./results, never into the installed package
    assert table == store.precomputed("reproduce_gemma3-270m_results").to_csv()
    assert list(work.iterdir()) == []


def test_readme_make_commands_are_makefile_targets_and_make_test_runs_pytest():
    """`make X` in the README exists, and `make test` (what CI runs) really runs pytest: a Makefile edit once
    dropped the target and CI passed in 5 s having run nothing."""
    import re
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    used = set(re.findall(r"`make ([a-z][\w-]*)", readme)) | set(re.findall(r"^make ([a-z][\w-]*)", readme, re.M))
    assert used and used <= targets, f"README uses make targets the Makefile lacks: {sorted(used - targets)}"
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "-m pytest" in dry


def test_make_course_opens_jupyterlab_and_prints_its_url():
    """The README's way into the course: `make course` starts JupyterLab on the notebooks (as root too) and
    prints the URL to open. Output is read on a thread, so a silent server fails the test at the deadline."""
    import queue
    import signal
    import socket
    import threading
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = re.compile(rf"http://127\.0\.0\.1:{port}/lab\?token=[0-9a-f]{{16,}}")  # the token a student pastes
    proc = subprocess.Popen(["make", "course", f"LAB_ARGS=--port={port} --no-browser"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + 90
    try:
        while time.monotonic() < deadline and not any(url.search(line) for line in seen):
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert any(url.search(line) for line in seen), "".join(seen)[-2000:]


def test_committed_notebooks_are_light_and_their_widgets_render_without_a_kernel():
    """Each notebook under 500 KB (all under 2 MB): no saved widget carries plotly.js. Every widget a notebook
    displays is in its saved widget state, so JupyterLab shows it (figures included) before any cell runs."""
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    sizes = {p.name: p.stat().st_size for p in notebooks}
    assert len(sizes) == 8 and max(sizes.values()) < 500_000 and sum(sizes.values()) < 2_000_000, sizes
    for path in notebooks:
        nb = json.loads(path.read_text())
        state = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
        shown = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for c in nb["cells"]
                 for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert all(model in state for model in shown), path.name
        assert "FigureWidget" not in json.dumps(state), path.name
        code = " ".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        if re.search(r"(results|layer|geometry|alpha|vector)_explorer\(", code):  # the explorers with a figure
            assert "application/vnd.plotly.v1+json" in json.dumps(state), f"{path.name}: an explorer saved no figure"
