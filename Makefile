# Two commands on a fresh machine: `make demo` (the whole lab on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on the CI/dev machines' disk; installing it first keeps pip from pulling a CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# The repo root is never on sys.path: our top-level `kernels/` would shadow the PyPI `kernels` that transformers
# imports. Python >= 3.11 then prepends neither cwd (`-m`, `-c`) nor a script's folder.
export PYTHONSAFEPATH := 1

.PHONY: install test test-all test-e2e e2e-deps demo dashboard bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when no test was collected; that is not a failure of the suite.
test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

# The browser test drives Debian's Chromium through Playwright (no browser download).
e2e-deps:
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

test-all: $(STAMP) e2e-deps
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m "not gpu"; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

# CI runs the browser test too when Chromium installs in time; the test skips itself where Chromium is missing.
test-e2e: $(STAMP)
	-timeout 900 $(MAKE) e2e-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m e2e; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/mixlab demo

dashboard: $(STAMP)
	$(VENV)/bin/mixlab dashboard

clean:
	rm -rf $(VENV) runs build *.egg-info
