# Two commands on a fresh machine: `make demo` (the whole lab on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on the CI/dev machines' disk; installing it first keeps pip from pulling a CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# Exact versions of the CPU environment (default + dev extras), made by `make lock`; `make test`/`demo` install it.
LOCK := requirements/cpu.lock
LATEST := .venv-latest
PYTEST_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Extra pytest arguments, e.g. `make test-latest PYTEST_ARGS=tests/foundation`.
PYTEST_ARGS ?=
# The repo root is never on sys.path: our top-level `kernels/` would shadow the PyPI `kernels` that transformers
# imports. Python >= 3.11 then prepends neither cwd (`-m`, `-c`) nor a script's folder.
export PYTHONSAFEPATH := 1

.PHONY: install test test-all test-e2e test-latest e2e-deps demo demo-readme readme-table dashboard bench lock clean

# Installs exactly the lock (--no-deps: nothing resolved at install time), then mixlab itself, then checks that the
# set is consistent. A lock that disagrees with pyproject's ranges fails `pip check`: run `make lock`.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep '^pip==' $(LOCK))"
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

# Re-resolves the newest versions pyproject's ranges admit (torch: the CPU build on disk) in a throw-away venv
# and writes them, exactly, to the lock. Commit the result.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q "$(TORCH_SPEC)"
	.venv-lock/bin/pip install -q ".[dev]"
	mkdir -p $(dir $(LOCK))
	{ echo "# Exact CPU environment of mixlab (default + dev extras), Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())'), linux x86_64."; \
	  echo "# Made by \`make lock\` on $$(date -u +%F); installed by \`make install\` with --no-deps. torch is the CPU build (+cpu)."; \
	  .venv-lock/bin/pip freeze --all --exclude mixlab | sed 's/+cpu$$//'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock build

# pytest exits 5 when no test was collected; that is not a failure of the suite.
test: $(STAMP)
	$(PYTEST_ENV) $(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

# The default suite on the newest versions pyproject's ranges admit, in a venv of its own (torch stays the CPU
# build on disk). Prints what differs from the lock first.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q "$(TORCH_SPEC)"
	$(LATEST)/bin/pip install -q -e ".[dev]"
	@$(LATEST)/bin/pip freeze --all --exclude mixlab | sed 's/+cpu$$//' | sort > $(LATEST)/freeze.txt
	@echo "newest allowed versions that differ from $(LOCK):"; grep -v '^#' $(LOCK) | sort | comm -13 - $(LATEST)/freeze.txt || true
	$(PYTEST_ENV) $(LATEST)/bin/python -m pytest -q $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

# The browser test drives Debian's Chromium through Playwright (no browser download).
e2e-deps:
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

test-all: $(STAMP) e2e-deps
	$(PYTEST_ENV) $(PY) -m pytest -q -m "not gpu"; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

# CI runs the browser test too when Chromium installs in time; the test skips itself where Chromium is missing.
test-e2e: $(STAMP)
	-timeout 900 $(MAKE) e2e-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m e2e; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/mixlab demo

# The demo, then its table (with the machine it ran on) spliced into README.md between the demo-table markers.
demo-readme: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/mixlab demo --readme README.md

# Splice the last run's table (runs/demo-results.md, or DEMO_RESULTS=path) into README.md without running again.
DEMO_RESULTS ?= runs/demo-results.md
readme-table: $(STAMP)
	$(VENV)/bin/mixlab demo --splice-from $(DEMO_RESULTS) --readme README.md

dashboard: $(STAMP)
	$(VENV)/bin/mixlab dashboard

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock runs build *.egg-info
