# Everything a fresh machine needs: `make demo` (main job) and `make test` (test suite).
# Both install exactly requirements/dev.lock (every package, transitive ones included, at one
# version with its hashes) into .venv, so every machine gets the same versions on every day.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/dev.lock
# The lock's universal resolution: one file for Python 3.10-3.12 (markers pick per version).
LOCK_FLAGS := --universal --python-version 3.10 --generate-hashes --custom-compile-command 'make lock'
# Ray's temp/log dirs stay out of the repo.
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install lock lock-upgrade demo test test-fast lint bench clean

# A new lock means a new venv: nothing from an earlier install survives beside the lock.
$(VENV)/.lock-stamp: $(LOCK)
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -c "import hashlib, json, pathlib; p = pathlib.Path('$(LOCK)'); \
	json.dump({'file': p.as_posix(), 'sha256': hashlib.sha256(p.read_bytes()).hexdigest()}, \
	open('$(VENV)/tsd_ray-lock.json', 'w'))"
	touch $@

$(VENV)/.installed-stamp: $(VENV)/.lock-stamp pyproject.toml
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

install: $(VENV)/.installed-stamp  ## exactly the lock, then tsd_ray itself (editable)

# Re-resolve the locks after editing dependencies in pyproject.toml: current pins are kept
# where they still fit; `make lock-upgrade` moves every package to its newest allowed release.
# Then run `make test` (the install check fails in seconds if the new set does not load).
# A lock file is replaced only when its content changes (a new lock means a new venv).
lock: install
	cp $(LOCK) $(LOCK).new
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --all-extras $(LOCK_FLAGS) $(UPGRADE) -o $(LOCK).new
	cmp -s $(LOCK).new $(LOCK) && rm $(LOCK).new || mv $(LOCK).new $(LOCK)
	cp requirements/runtime.lock requirements/runtime.lock.new
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --extra cluster $(LOCK_FLAGS) -c $(LOCK) -o requirements/runtime.lock.new
	cmp -s requirements/runtime.lock.new requirements/runtime.lock && rm requirements/runtime.lock.new || mv requirements/runtime.lock.new requirements/runtime.lock

lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade

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
