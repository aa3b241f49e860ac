# Set-up is automatic: every target creates .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: install test lint demo bench mutation clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,embed,ray,spark,s3]'
	# the webdataset open_clip's training extra pins (it ships wids too), kept apart: the
	# tests of those clients put it first on their path
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/clients/webdataset-0.2.86 webdataset==0.2.86
	# img2dataset with its own pins, for the test that downloads from 127.0.0.1; its
	# 'dataclasses' backport would shadow the standard library's on PYTHONPATH
	$(BIN)/python -m pip install -q --upgrade --target $(VENV)/clients/img2dataset img2dataset==1.47.0
	rm -rf $(VENV)/clients/img2dataset/dataclasses.py $(VENV)/clients/img2dataset/dataclasses-*.dist-info
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs schemas tests bench

# pytest in TEST_WORKERS processes (pytest-xdist; tests/conftest.py groups them): on 2 cores
# the suite took 853 s in one process and 548-812 s in two, as much of it waits on Ray, Spark,
# subprocesses and the browser. TEST_WORKERS=0 runs it in this process, in order.
TEST_WORKERS ?= 2

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

demo: $(STAMP)
	$(BIN)/python -m pipeline.demo --out $(DEMO_DIR)

bench: $(STAMP)
	$(BIN)/python bench/bench_embeddings_run.py

# Mutation testing with mutmut (settings: [tool.mutmut] in pyproject.toml). Slow, so it is
# neither in `make test` nor in CI: a full run is ~6,000 mutants and takes hours on 2 cores.
# Results are cached in mutants/: a rerun only tests mutants of functions that changed.
#   make mutation                                  # every configured module
#   make mutation MUTANTS='pipeline.stages.*'      # some modules (mutants named by glob)
#   make mutation MUTATION_JOBS=4                  # parallel test runs (default: 2)
# Then `$(BIN)/mutmut results` lists the survivors, `$(BIN)/mutmut show NAME` shows one.
MUTANTS ?=
MUTATION_JOBS ?= 2
MUTATION_STAMP := $(VENV)/.installed-mutation

$(MUTATION_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,embed,mutation]'
	@touch $(MUTATION_STAMP)

# Tests' tmp_path folders go to a private TMPDIR removed afterwards: each mutant's test run
# ends with os._exit, so pytest never cleans its basetemp up.
mutation: $(STAMP) $(MUTATION_STAMP)
	@tmp=$$(mktemp -d -t conceptprune-mutation.XXXXXX) && \
	  TMPDIR=$$tmp nice -n 19 $(BIN)/mutmut run --max-children $(MUTATION_JOBS) $(foreach m,$(MUTANTS),'$(m)'); \
	  rc=$$?; rm -rf $$tmp; exit $$rc
	$(BIN)/python bench/mutation_report.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) bench/out .pytest_cache .ruff_cache .hypothesis mutants
