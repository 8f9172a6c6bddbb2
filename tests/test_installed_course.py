"""The course on a hosted notebook service: the eight notebooks run in a fresh virtual environment whose kit is
installed from a built wheel by the notebooks' own first cell (scripts/install_cell.py), with no checkout on
the path. About 3 minutes on 2 CPU cores (179 s); the timings go to test-output/installed_course.json."""

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

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


def _install_cell_tool():
    spec = importlib.util.spec_from_file_location("add_install_cell", ROOT / "scripts" / "add_install_cell.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


@pytest.mark.notebooks
@pytest.mark.model
def test_the_course_runs_on_the_kit_installed_from_its_wheel_by_the_first_cell(tmp_path, monkeypatch):
    started = time.monotonic()
    wheel = _build_wheel(tmp_path)
    version = wheel.name.split("-")[1]
    python = _fresh_venv(tmp_path)
    work = tmp_path / "course"  # the uploaded course: notebooks and the wheel side by side, no checkout
    work.mkdir()
    shutil.copy(wheel, work / wheel.name)
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
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

    # Until scripts/add_install_cell.py has been run on the committed notebooks, their first code cell is the
    # set-up (imports tv_utils): the copy then gets the install cell here. Once it has, the copies run as they are.
    tool, inserted, timings, printed = _install_cell_tool(), [], {}, {}
    for path in sorted(work.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if tool.with_install_cell(nb, path.name[:2]):
            inserted.append(path.name)
        t0 = time.monotonic()
        NotebookClient(nb, kernel_name=KERNEL, timeout=900, resources={"metadata": {"path": str(work)}}).execute()
        timings[path.stem] = round(time.monotonic() - t0, 1)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code[0].source == tool.CELL
        printed[path.stem] = _text(code[0]).splitlines()
        stderr = {i: o.text for i, c in enumerate(code) for o in c.outputs
                  if o.output_type == "stream" and o.name == "stderr" and o.text.strip()}
        assert not stderr, f"{path.name}: code cells wrote to stderr: {stderr}"

    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    where = f"tv_utils {version} from {site_packages}/tv_utils"
    first, *rest = printed.values()
    assert first == [f"installing tv_utils from {work / wheel.name} (a few minutes the first time) ...",
                     f"Successfully installed tv-utils-{version}", where], first
    assert all(lines == [where] for lines in rest), printed  # installed once, by the first notebook

    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    (out / "installed_course.json").write_text(json.dumps({
        "setup_s": round(setup_s, 1), "notebooks_s": timings, "total_s": round(time.monotonic() - started, 1),
        "install_cell_inserted_by_the_test": inserted, "first_cell_printed": printed}, indent=1) + "\n")
