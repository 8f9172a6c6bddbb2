# Inside an active virtual environment (or conda env) that environment is used; otherwise a local .venv
# is created, so the commands also work as root on a bare Debian machine (whose python3 is externally managed).
VENV ?= $(if $(VIRTUAL_ENV)$(CONDA_PREFIX),,.venv)
PY := $(if $(VENV),$(VENV)/bin/python,python3)

.PHONY: setup reproduce test lock
setup:
	$(if $(VENV),test -x $(PY) || python3 -m venv $(VENV))
	PYTHON=$(PY) bash scripts/setup.sh

reproduce: setup
	$(PY) -m tv_utils reproduce

test: setup
	$(PY) -m pytest

lock:  # re-resolve pyproject.toml's ranges into requirements-lock.txt; run `make test` after it
	bash scripts/lock.sh
