# Two commands, each doing its own set-up on a fresh machine:
#   make run    the main job, on the model
#   make test   every test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench clean

$(BIN)/thinsim: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/thinsim
	$(BIN)/thinsim scenario examples/walkthrough.scn

test: $(BIN)/thinsim
	$(BIN)/python -m pytest -q

bench: $(BIN)/thinsim
	$(BIN)/thinsim bench --json

clean:
	rm -rf $(VENV) build *.egg-info
