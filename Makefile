# Inside an active virtual environment (or conda env) that environment is used; otherwise a local .venv
# is created, so the commands also work as root on a bare Debian machine (whose python3 is externally managed).
VENV ?= $(if $(VIRTUAL_ENV)$(CONDA_PREFIX),,.venv)
PY := $(if $(VENV),$(VENV)/bin/python,python3)

.PHONY: setup reproduce test test-fast lint lock course wheel reference reference-qwen
setup:
	$(if $(VENV),test -x $(PY) || python3 -m venv $(VENV))
	PYTHON=$(PY) bash scripts/setup.sh

reproduce: setup  # into ./results, then compared with the committed reference
	$(PY) -m tv_utils reproduce

test: setup
	$(PY) -m pytest

# The edit-test loop (README "Tests"), in the environment `make setup` made: tests on tiny models and toy data,
# none marked model (the real Gemma), notebooks, browser, gpu or cli (subprocesses; pyproject.toml's markers).
test-fast:
	$(PY) -m pytest -q -m "not (model or notebooks or browser or gpu or cli)" tests

lint:  # ruff, with pyproject.toml's settings (CI runs it before the tests)
	$(PY) -m ruff check tv_utils tests scripts conftest.py

# The course in JupyterLab, from the environment `make setup` made; it prints the URL to open (as root too).
course:
	$(PY) -m jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# The kit as a wheel, dist/tv_utils-*.whl, for a hosted notebook service (README "On a hosted notebook service"):
# upload it with the notebooks and their first cell installs it. It carries the committed result tables.
wheel:
	$(if $(VENV),test -x $(PY) || python3 -m venv $(VENV))
	rm -rf build dist/tv_utils-*.whl
	$(PY) -m pip wheel --no-deps --disable-pip-version-check -q -w dist .
	@ls dist/tv_utils-*.whl

lock:  # re-resolve pyproject.toml's ranges into requirements-lock.txt; run `make test` after it
	bash scripts/lock.sh

# The committed reference (figures/), which the course reads, is written only here, on purpose. reproduce, conflict,
# vocab's task words and scorecard run the official code's protocol (docs/protocol.md); widgets, geometry,
# beyond, function-vectors, depth and vocab's per-layer tables the kit's conventions. On 2 CPU cores: reproduce ~18 min (5 seeds), function-vectors
# ~6-14 min (CPUs with AMX the faster); depth needs the models of `python -m tv_utils depth -h` installed
# (install-model). Review `git diff --stat figures` before committing.
reference: setup
	$(PY) -m tv_utils reproduce --seeds 0 1 2 3 4 --out figures
	$(PY) -m tv_utils departures --out figures  # the official code's protocol, and each departure from it (~15 min)
	$(PY) -m tv_utils departures --conflict --out figures
	$(PY) -m tv_utils conflict --out figures
	$(PY) -m tv_utils widgets --out figures  # what the ICL playground and conflict widget show at once
	$(PY) -m tv_utils geometry --out figures
	$(PY) -m tv_utils vocab --out figures
	$(PY) -m tv_utils beyond --out figures
	$(PY) -m tv_utils function-vectors --out figures
	$(PY) -m tv_utils depth --out figures
	$(PY) -m tv_utils scorecard --out figures

# The second model's reference (README "Two models"): about 105 minutes in float32 on 2 CPU cores (reproduce 37,
# conflict 33, geometry 14, vocab 19), see the README.
reference-qwen: setup
	$(PY) -m tv_utils install-model qwen2.5-coder-1.5b
	$(PY) -m tv_utils reproduce --model qwen2.5-coder-1.5b --out figures
	$(PY) -m tv_utils conflict --model qwen2.5-coder-1.5b --out figures
	$(PY) -m tv_utils geometry --model qwen2.5-coder-1.5b --out figures
	$(PY) -m tv_utils vocab --model qwen2.5-coder-1.5b --out figures
	$(PY) -m tv_utils scorecard --model qwen2.5-coder-1.5b --out figures
