PY ?= python3

.PHONY: setup reproduce test
setup:
	bash scripts/setup.sh

reproduce: setup
	$(PY) -m tv_utils reproduce

test: setup
	$(PY) -m pytest
