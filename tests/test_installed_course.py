"""The course on a hosted notebook service, and the instructor's answer key, in one run: the eight notebooks with
their solutions filled in (`python -m tv_utils course --solutions DIR --kernel NAME`) run in a fresh virtual
environment whose kit is installed from a built wheel by the notebooks' own first cell (scripts/install_cell.py),
with no checkout on the path. Every check must say Correct, and notebook 3's pipeline built from the solutions
alone must give the committed row. About 5 minutes on 2 CPU cores (293 s); the timings go to
test-output/installed_course.json. (The committed notebooks, stubs and all, run in tests/test_browser.py.)"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from tv_utils import answer_key

pytestmark = pytest.mark.notebooks

ROOT = Path(__file__).resolve().parent.parent
KERNEL = "tv-utils-installed"


def _build_wheel(tmp_path: Path) -> Path:
    """The kit's wheel, built from a copy of the checkout (the build leaves nothing in the checkout)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "tv_utils", source / "tv_utils", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "figures", source / "figures")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "-w", tmp_path / "dist", source], check=True)
    wheel, = (tmp_path / "dist").glob("tv_utils-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path) -> Path:
    """A new venv (its own pip) that sees this environment's packages, but not tv_utils, through a .pth file.

    The .pth names a folder of links to this environment's site-packages minus the kit's own entries: the
    editable install's finder (`__editable__*`, which a path line would not run anyway) and its
    `tv_utils-*.dist-info`, which pip would otherwise take for an installed tv_utils. The venv's bundled
    setuptools is removed so the shared, newer one satisfies torch's requirement without a download."""
    shared = tmp_path / "shared-site-packages"
    shared.mkdir()
    for folder in map(Path, dict.fromkeys(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())):
        for entry in folder.iterdir():
            hidden = entry.name.startswith(("tv_utils", "__editable__")) or entry.suffix == ".pth"
            if not hidden and not (shared / entry.name).exists():
                (shared / entry.name).symlink_to(entry)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True, cwd=tmp_path)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "shared_environment.pth").write_text(f"{shared}\n")
    return python


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


@pytest.mark.model
def test_the_answer_key_runs_on_the_kit_installed_from_its_wheel_by_the_first_cell(tmp_path, monkeypatch):
    started = time.monotonic()
    wheel = _build_wheel(tmp_path)
    version = wheel.name.split("-")[1]
    python = _fresh_venv(tmp_path)
    work = tmp_path / "course"  # the uploaded course: notebooks and the wheel side by side, no checkout
    work.mkdir()
    shutil.copy(wheel, work / wheel.name)
    for path in answer_key.notebook_paths():
        shutil.copy(path, work / path.name)

    for name in ("PYTHONPATH", "TV_UTILS_SOURCE", "VIRTUAL_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # every dependency must come from the shared environment
    probe = ("import importlib.metadata as m, importlib.util as u, sys; "
             "print(u.find_spec('tv_utils'), [n for n in ('torch', 'nnsight', 'ipykernel') if u.find_spec(n) is None], "
             "[d.metadata['Name'] for d in m.distributions() if d.metadata['Name'] in ('tv_utils', 'tv-utils')])")
    seen = subprocess.run([python, "-c", probe], cwd=work, capture_output=True, text=True, check=True).stdout
    assert seen.split() == ["None", "[]", "[]"], f"the fresh venv should see the dependencies, not tv_utils: {seen}"
    failed = subprocess.run([python, "-c", "import tv_utils"], cwd=work, capture_output=True, text=True)
    assert failed.returncode == 1 and "No module named 'tv_utils'" in failed.stderr

    kernels = tmp_path / "jupyter" / "kernels" / KERNEL
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh venv, tv_utils from its wheel", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    setup_s = time.monotonic() - started

    key = tmp_path / "key"
    command = [sys.executable, "-m", "tv_utils", "course", "--solutions", str(key), "--notebooks", str(work),
               "--kernel", KERNEL]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, f"{' '.join(command)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    assert run.stdout.strip().endswith(f"every check correct, written to {key}"), run.stdout

    tool = (ROOT / "scripts" / "install_cell.py").read_text(encoding="utf-8").rstrip("\n")
    printed = {}
    for path in sorted(key.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code[0].source == tool, f"{path.name}: the first code cell is not scripts/install_cell.py"
        printed[path.stem] = _text(code[0]).splitlines()
        stderr = {i: o.text for i, c in enumerate(code) for o in c.outputs
                  if o.output_type == "stream" and o.name == "stderr" and o.text.strip()}
        assert not stderr, f"{path.name}: code cells wrote to stderr: {stderr}"
        for exercise in answer_key.exercises(work / path.name):  # the command checked these; the file shows them
            assert nb.cells[exercise.cell].source == exercise.solution
            assert _text(nb.cells[exercise.cell + 1]).startswith("✅ Correct:"), (path.name, exercise.number)
    assert list(printed) == [p.stem for p in answer_key.notebook_paths()]

    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    where = f"tv_utils {version} from {site_packages}/tv_utils"
    first, *rest = printed.values()
    assert first == [f"installing tv_utils from {work / wheel.name} (a few minutes the first time) ...",
                     f"Successfully installed tv-utils-{version}", where], first
    assert all(lines == [where] for lines in rest), printed  # installed once, by the first notebook

    # notebook 3's pipeline from the solutions alone (notebook 2's functions kept, 3's own): the stored row
    nb = nbformat.read(key / "03_layer_sweep.ipynb", as_version=4)
    pipeline = next(_text(c) for c in nb.cells if "fns.choose_layer(" in c.source)
    assert all(f"{step}: yours" in pipeline for step in ("read_theta", "mean_theta", "patch_theta", "choose_layer"))
    assert pipeline.rstrip().endswith("the same row"), pipeline

    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    (out / "installed_course.json").write_text(json.dumps({
        "setup_s": round(setup_s, 1), "answer_key_s": round(time.monotonic() - started - setup_s, 1),
        "total_s": round(time.monotonic() - started, 1), "first_cell_printed": printed}, indent=1) + "\n")
