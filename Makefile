# Everything a fresh machine needs: `make demo` (main job) and `make test` (test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Ray's temp/log dirs stay out of the repo.
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install  ## demo corpus -> features -> SS, WS, MS (Algorithm 1) -> Table 1
	$(BIN)/python jobs/iterate.py --config demo

test: install  ## the whole suite (CI runs exactly this)
	$(BIN)/python -m pytest

test-fast: install  ## skip the slow end-to-end runs
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check tsd_ray jobs tests bench

bench: install
	$(BIN)/python bench/bench_features.py
	$(BIN)/python bench/bench_read.py
	$(BIN)/python bench/bench_memory.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
