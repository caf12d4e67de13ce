# Two entry points, both self-installing on a fresh machine (pip only).
PYTHON ?= python3

.PHONY: demo test deps bench

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	@$(PYTHON) -m pip install -q -e ".[test]"

demo: deps
	$(PYTHON) -m hyca_core.demo

test: deps
	$(PYTHON) -m pytest

bench: deps
	$(PYTHON) -m hyca_core.bench
