# One environment, made from the project's own files: .venv (python3 -m venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint format demo lab docs bench screenshot clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[app,notebooks,export,dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check emanet app tests benchmarks
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (CI's `make test` runs them all).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check emanet app tests benchmarks
	$(BIN)/ruff format --check emanet app tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format emanet app tests benchmarks
	$(BIN)/ruff check --fix emanet app tests benchmarks

demo: $(STAMP)
	$(BIN)/python -m app

# On this machine only (localhost); --allow-root where the user is root, as in most containers.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ --ip=localhost $(if $(filter 0,$(shell id -u)),--allow-root)

# docs/notebooks/: the notebooks run in full (minutes each), outputs kept; only those whose code
# changed run again (tests/test_notebooks.py fails while a rendering is out of date).
docs: $(STAMP)
	$(BIN)/python docs/notebooks/render.py

# docs/app.png and docs/parts.gif (.png): the app on the bundled model, a toy-city example, in
# Debian's chromium.
screenshot: $(STAMP)
	$(BIN)/python benchmarks/screenshot_app.py --out docs/app.png --parts-gif docs/parts.gif

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ema.py
	$(BIN)/python benchmarks/bench_model.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
