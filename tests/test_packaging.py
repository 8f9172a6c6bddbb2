"""A built wheel ships the committed result tables, and the kit installed from it reads them from there."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tv_utils import store

ROOT = Path(__file__).resolve().parent.parent
TABLES = (".csv", ".json", ".safetensors")  # what the notebooks read; the PNG and HTML figures stay out


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
    assert shipped == sorted(p.name for p in (ROOT / "figures").iterdir() if p.suffix in TABLES)

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
