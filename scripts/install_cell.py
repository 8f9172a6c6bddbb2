# The course's kit, tv_utils: installed into this kernel if it is missing (JupyterHub, Colab, ...).
import importlib
import importlib.metadata
import importlib.util
import os
import site
import subprocess
import sys
from pathlib import Path

if importlib.util.find_spec("tv_utils") is None:
    wheels = sorted(Path.cwd().glob("tv_utils-*.whl")) or sorted(Path.cwd().parent.glob("tv_utils-*.whl"))
    source = str(wheels[-1]) if wheels else os.environ.get("TV_UTILS_SOURCE")
    if not source:
        raise ModuleNotFoundError(
            "tv_utils is not installed. Upload the kit's wheel (tv_utils-*.whl, from `make wheel`) next to this "
            "notebook or one folder up, or set TV_UTILS_SOURCE to a pip requirement (e.g. a git URL of the "
            "course's repository), then run this cell again.")
    print(f"installing tv_utils from {source} (a few minutes the first time) ...")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", source],
                         capture_output=True, text=True)
    if pip.returncode:
        raise RuntimeError(f"pip could not install {source}:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}")
    print(next((line for line in pip.stdout.splitlines() if line.startswith("Successfully")), "pip: done"))
    if site.ENABLE_USER_SITE:
        site.addsitedir(site.getusersitepackages())  # pip's --user fallback, when site-packages is read-only
    importlib.invalidate_caches()

print(f"tv_utils {importlib.metadata.version('tv_utils')} from "
      f"{importlib.util.find_spec('tv_utils').submodule_search_locations[0]}")
