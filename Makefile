# Two commands do all set-up: `make demo` and `make test`. Both build .venv first (idempotent).
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.adaptflow-installed
DEMO    := examples/unicode-categories/spec.yaml
RAG_DEMO := examples/python-docs/spec.yaml
SFT_DEMO := examples/unicode-lowercase/spec.yaml

.PHONY: setup demo test test-all test-fast bench lint format clean templates

setup: $(STAMP)

# torch goes in first so that pip takes the CPU wheel and never pulls CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(BIN)/adaptflow recommend $(DEMO)
	$(BIN)/adaptflow run $(DEMO)
	$(BIN)/adaptflow predict "models:/unicode-categories@champion" \
		"LATIN SMALL LETTER SHARP S" "CYRILLIC CAPITAL LETTER ZHE" "ARABIC-INDIC DIGIT SEVEN" \
		"N-ARY CIRCLED PLUS OPERATOR" "SNOWMAN" "INVERTED QUESTION MARK"
	$(BIN)/adaptflow run $(RAG_DEMO)
	$(BIN)/adaptflow predict "models:/python-docs@champion" \
		"how do I make a temporary folder that cleans itself up?" "checksum of a file with md5"
	$(BIN)/adaptflow run $(SFT_DEMO)
	$(BIN)/adaptflow predict "models:/unicode-lowercase@champion" \
		"Name the lowercase form of: GREEK CAPITAL LETTER PI" \
		"Name the lowercase form of: LATIN CAPITAL LETTER E WITH ACUTE"
	$(BIN)/adaptflow run examples/unicode-lowercase/grpo.yaml
	$(BIN)/adaptflow predict "models:/unicode-lowercase-grpo@champion" \
		"Name the lowercase form of: GREEK CAPITAL LETTER PI" \
		"Name the lowercase form of: LATIN CAPITAL LETTER E WITH ACUTE" \
	|| { echo "GRPO not promoted (no @champion): predicting with @challenger"; \
	$(BIN)/adaptflow predict "models:/unicode-lowercase-grpo@challenger" \
		"Name the lowercase form of: GREEK CAPITAL LETTER PI" \
		"Name the lowercase form of: LATIN CAPITAL LETTER E WITH ACUTE"; }

# The CI command (under 30 minutes on 2 cores): every test but those marked slow, which repeat
# a path faster tests cover (on another model family, task or server); test-all runs them too.
test: setup
	$(BIN)/pytest -q -m "not slow"

test-all: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not integration and not slow"

# A new home's MLflow and Prefect databases start from these (adaptflow/sqlite_templates.py);
# rerun after upgrading either library (tests/test_sqlite_templates.py fails until then).
templates: setup
	$(BIN)/python -m flows.embedded

bench: setup
	$(BIN)/python benchmarks/bench_pipeline_overhead.py
	$(BIN)/python benchmarks/bench_ladder_overhead.py
	$(BIN)/python benchmarks/bench_curation.py
	$(BIN)/python benchmarks/bench_rag.py
	$(BIN)/python benchmarks/bench_sft.py
	$(BIN)/python benchmarks/bench_export.py
	$(BIN)/python benchmarks/bench_operations.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_align.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .adaptflow .pytest_cache .mypy_cache .ruff_cache
