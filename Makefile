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

# Compiled modules are deleted before every build: a build that compiles nothing
# (IZ_PURE_PYTHON=1, or a failed one) must not leave older ones shadowing the sources.
CLEAN_NATIVE := rm -f $(addsuffix /*.so,$(NATIVE_DIRS)) engine_*__mypyc*.so
TOUCH_NATIVE := find $(NATIVE_DIRS) . -maxdepth 1 -name '*.so' -exec touch {} +

$(BIN)/iz-engine: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(CLEAN_NATIVE)
	$(BIN)/pip install --quiet -e '.[test]'
	$(TOUCH_NATIVE)
	touch $(BIN)/iz-engine $(NATIVE)

# the same compiler as the install's (mypy and setuptools pinned in the test extras)
$(NATIVE): $(BIN)/iz-engine $(NATIVE_SRC)
	$(CLEAN_NATIVE)
	$(BIN)/python setup.py --quiet build_ext --inplace
	$(TOUCH_NATIVE)  # the copies out of build/ keep older times
	touch $(NATIVE)

install: $(BIN)/iz-engine $(NATIVE)

run: install
	$(BIN)/iz-engine serve

lint: install
	$(BIN)/ruff check engine tests bench tools setup.py
	$(BIN)/mypy

test: lint
	$(BIN)/pytest
