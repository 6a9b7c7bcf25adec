# The two set-up commands: `make demo` and `make test`. Both create/reuse .venv and fetch data.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast fuzz lint docs data browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

data:
	sh scripts/fetch_data.sh

browser:
	sh scripts/install_browser.sh

demo: $(STAMP) data
	$(BIN)/cnnlab train --data fashion-mnist --budget-minutes 5 --runs-dir runs

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

# the documentation pages, with the command reference generated from the CLI and the API reference from the
# docstrings; the course notebooks are executed first (a failing cell fails) and rendered with their outputs;
# strict: a broken link fails
docs: $(STAMP) data
	$(BIN)/python scripts/notebooks.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: $(STAMP) data browser lint docs
	$(BIN)/pytest -q

# minutes, not part of `make test` (which runs a short seeded pass of the same tests)
fuzz: $(STAMP)
	FUZZ_EXAMPLES=20000 $(BIN)/pytest -q -p no:warnings tests/test_fuzz.py

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build
