# The two commands a newcomer needs: `make run` (engine on embedded SQLite) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# engine/hl7 and engine/validation are compiled with mypyc (setup.py): the install compiles
# them, and an edit of their sources recompiles them in place before the next run or test, so
# the C modules never lag behind the Python they are built from (tests/test_native.py checks).
NATIVE_DIRS := engine/hl7 engine/validation
NATIVE_SRC := $(wildcard $(addsuffix /*.py,$(NATIVE_DIRS))) setup.py
NATIVE := $(VENV)/.native-build

.PHONY: run test lint install

$(BIN)/iz-engine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	find $(NATIVE_DIRS) . -maxdepth 1 -name '*.so' -exec touch {} +
	touch $(BIN)/iz-engine $(NATIVE)

$(NATIVE): $(BIN)/iz-engine $(NATIVE_SRC)
	rm -f $(addsuffix /*.so,$(NATIVE_DIRS)) engine_*__mypyc*.so
	$(BIN)/python setup.py --quiet build_ext --inplace
	find $(NATIVE_DIRS) . -maxdepth 1 -name '*.so' -exec touch {} +  # copies keep old times
	touch $(NATIVE)

install: $(BIN)/iz-engine $(NATIVE)

run: install
	$(BIN)/iz-engine serve

lint: install
	$(BIN)/ruff check engine tests bench tools setup.py
	$(BIN)/mypy

test: lint
	$(BIN)/pytest
