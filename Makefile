# Set-up is automatic: every target creates .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,embed]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs schemas tests bench

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m pipeline.demo --out $(DEMO_DIR)

bench: $(STAMP)
	$(BIN)/python bench/bench_embeddings_run.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) bench/out .pytest_cache .ruff_cache .hypothesis
