# Two commands on a fresh machine: `make demo` (set up + the main job) and `make test`.
# TORCH_SPEC: this machine's CPU build of torch lies on disk as torch==2.13.0; elsewhere
# (e.g. a GPU box) use `make TORCH_SPEC=torch demo` to let pip pick the right build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: install chromium demo test test-fast lint check notebooks clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,ray]"
	@$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# kaleido renders PNG/SVG/PDF figures in a headless Chromium (HTML figures need none).
# Install Debian's chromium where we can (root with apt-get); never fail the build without it.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || \
	{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  echo "installing Debian's chromium with apt-get (system package, for PNG/SVG/PDF figures)" && \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	echo "note: chromium not installed; figures export as HTML only (PNG/SVG/PDF need it: run 'make chromium' as root, or install Debian's chromium)"

# Three init scales x three seeds (trained as one ensemble) under the authors' conventions;
# the report judges each published claim over the seeds. DEMO_SETTING is the CPU
# calibration of docs/RESULTS.md ("Calibration under the authors' conventions").
DEMO_SETTING ?= --batch-size 50 --steps 5000 --eval-every 100 --lr 4e-3
demo: $(STAMP)
	$(BIN)/probe study --out $(DEMO_OUT) --overwrite --gammas 0.3,0.5,0.8 --seeds 0,1,2 $(DEMO_SETTING)
	@echo "Open $(DEMO_OUT)/report.html in a browser."

# The whole suite; every initlens function's annotations (jaxtyping shapes) are checked
# while it runs (pyproject's pytest addopts).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Unit tests only (about a minute): no training, CLI subprocess, notebook or browser.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not slow"

# Lint and format check (pyproject's [tool.ruff]); `ruff check --fix .` and
# `ruff format .` fix most findings.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check: lint test

# The .ipynb notebooks are generated from their jupytext .py sources (without outputs);
# edit the .py, then regenerate. tests/test_notebooks.py fails when they drift apart.
notebooks: $(STAMP)
	$(BIN)/jupytext --to ipynb notebooks/[0-9]*.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache notebook_out notebooks/notebook_out
