# Two entry points, both self-installing on a fresh machine (pip only).
PYTHON ?= python3

.PHONY: demo test deps bench bench-engine test-comfyui test-browser frontend

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	@$(PYTHON) -m pip install -q -e ".[test]"

demo: deps
	$(PYTHON) -m hyca_core.reference.demo

test: deps
	$(PYTHON) -m pytest

# The reference benchmark (BENCHMARKS.md; about 20 min on 2 cores) with its plot (matplotlib)
bench: deps
	@$(PYTHON) -m pip install -q -e ".[bench]"
	$(PYTHON) -m hyca_core.reference.benchmark --out bench_out

# Hybrid vs uniform weighted-sum cost on full-size FLUX features
bench-engine: deps
	$(PYTHON) -m hyca_core.reference.bench

# Integration tests against a real ComfyUI: COMFYUI_PATH=/path/to/ComfyUI COMFY_PYTHON=/path/to/its/python
# (tools/comfyui_venv.sh builds a version's tree and venv; README, "Integration tests")
test-comfyui:
	@test -n "$(COMFYUI_PATH)" || { echo "set COMFYUI_PATH=/path/to/ComfyUI and COMFY_PYTHON=the python that runs it"; exit 2; }
	COMFYUI_PATH=$(COMFYUI_PATH) $(or $(COMFY_PYTHON),$(PYTHON)) -m pytest tests/comfyui --ignore=tests/comfyui/test_browser.py \
		tests/reference/test_reference_model.py tests/reference/test_reference_wan.py

# The newest ComfyUI frontend from PyPI, unpacked into .frontends/: the browser test runs on it too
frontend:
	rm -rf .frontends/download && $(PYTHON) -m pip download -q --no-deps comfyui-frontend-package -d .frontends/download
	cd .frontends && for w in download/*.whl; do d=$$(basename $$w | cut -d- -f1-2); rm -rf $$d; unzip -q $$w -d $$d; done

# The page in headless chromium (apt-get install chromium; Node.js): same variables as test-comfyui
test-browser:
	@test -n "$(COMFYUI_PATH)" || { echo "set COMFYUI_PATH=/path/to/ComfyUI and COMFY_PYTHON=the python that runs it"; exit 2; }
	cd tests/browser && npm ci --no-audit --no-fund
	COMFYUI_PATH=$(COMFYUI_PATH) $(or $(COMFY_PYTHON),$(PYTHON)) -m pytest tests/comfyui/test_browser.py
