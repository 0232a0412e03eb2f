# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast bench lint sim simulate clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "xtb needs Python >= 3.11; found " + sys.version.split()[0] + " (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,embedded]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/xtb demo

# The suite mostly waits (worker start-ups, polls, cycles in real time), so it runs in parallel:
# pytest-xdist worker processes, each test file whole on one of them (--dist loadfile: a module's
# deployment fixture is built once, on one worker). PYTEST_WORKERS=0 runs it serially.
PYTEST_WORKERS ?= 4
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: lint
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

# Skips the long fault-injection runs (CI runs everything through `make test`).
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m bench.run

# Style, the layer contract (.importlinter) and the type checker.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

sim: $(STAMP)
	$(BIN)/xtb sim

# The cycle's fault simulator (tests/simulation/run.py): `make simulate SEEDS=N` runs seeds 0..N-1,
# `make simulate SEED=S` replays one seed with its trace. Exits non-zero on a broken invariant.
SEEDS ?= 1000
simulate: $(STAMP)
	PYTHONPATH=. $(BIN)/python -m tests.simulation.run $(if $(SEED),--seed $(SEED),--seeds $(SEEDS))

clean:
	rm -rf $(VENV) .xtb .pytest_cache .ruff_cache *.egg-info
