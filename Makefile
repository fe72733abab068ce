# The two commands a newcomer needs: `make run` (engine on embedded SQLite) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint install

$(BIN)/iz-engine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/iz-engine

install: $(BIN)/iz-engine

run: install
	$(BIN)/iz-engine serve

lint: install
	$(BIN)/ruff check engine tests bench tools
	$(BIN)/mypy

test: lint
	$(BIN)/pytest
