# `make demo` and `make test` work on a fresh clone: each creates .venv/ and installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-v1

.PHONY: demo test lint e2e bench bench-comfy clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch comes from ComfyUI in production; here a CPU build, only when absent.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	# Only for its bundled CLIP BPE vocabulary (the tiny model's tokenizer); no dependencies.
	$(PY) -m pip install -q --no-deps open-clip-torch
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q
	@if command -v node >/dev/null 2>&1 && ls tests/js/*.test.mjs >/dev/null 2>&1; then \
		node --test tests/js/*.test.mjs; else echo "node or JS tests absent: JS unit tests skipped"; fi

lint: $(STAMP)
	$(PY) -m ruff check .

# The e2e tier: the pack inside a real ComfyUI on the CPU (see README "End-to-end tests"). Needs
# COMFYUI_DIR (a ComfyUI checkout) and COMFYUI_PYTHON (the interpreter ComfyUI runs with), from the
# environment or the command line; the pack's requirements are installed into that interpreter
# first. Without them the tests report why they are skipped.
# The browser tests (tests/e2e/test_browser.py) also need Playwright in the dev venv
# (requirements-e2e.txt; no browser download) and a system Chromium, else they say why they skip.
# STYLE_LORA_SCREENSHOTS_TO=docs/img copies the README screenshots from the run.
E2E_STAMP := $(VENV)/.installed-e2e-v1

$(E2E_STAMP): $(STAMP) requirements-e2e.txt
	$(PY) -m pip install -q -r requirements-e2e.txt
	touch $(E2E_STAMP)

e2e: $(STAMP) $(E2E_STAMP)
	@if [ -n "$(COMFYUI_DIR)" ] && [ -n "$(COMFYUI_PYTHON)" ]; then \
		"$(COMFYUI_PYTHON)" -m pip install -q -r requirements.txt; fi
	COMFYUI_DIR="$(COMFYUI_DIR)" COMFYUI_PYTHON="$(COMFYUI_PYTHON)" HF_HUB_OFFLINE=1 \
		$(PY) -m pytest -v -rs -s --durations=0 tests/e2e

bench: $(STAMP)
	$(PY) bench/bench_train_step.py

# The product path in a real ComfyUI, side by side with kohya when KOHYA_DIR/KOHYA_PYTHON are set.
bench-comfy:
	@test -n "$(COMFYUI_DIR)" -a -n "$(COMFYUI_PYTHON)" || (echo "set COMFYUI_DIR and COMFYUI_PYTHON"; exit 2)
	$(COMFYUI_PYTHON) bench/bench_comfy_train.py --comfyui-dir $(COMFYUI_DIR) --out docs/benchmarks.md

clean:
	rm -rf demo_output .pytest_cache
