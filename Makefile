# Two commands, each doing its own set-up on a fresh machine:
#   make run    the main job, on the model
#   make test   every test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench clean system-deps

# Debian packages the tests use: Debian's own thin tools check the metadata files thinsim
# writes.  Installed when missing and we are root (as on CI); otherwise those tests say so.
system-deps:
	@if ! command -v thin_check >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq thin-provisioning-tools) >/dev/null; \
	fi

$(BIN)/thinsim: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The seed study's walkthrough on the simulated host, in a fresh folder that is removed after.
run: $(BIN)/thinsim
	@work=$$(mktemp -d /tmp/thinsim-run.XXXXXX) && cd "$$work" && \
		"$(CURDIR)/$(BIN)/thinsim" run "$(CURDIR)/examples/seed-walkthrough.sh"; \
		rc=$$?; rm -rf "$$work"; exit $$rc

test: $(BIN)/thinsim system-deps
	$(BIN)/python -m pytest -q

bench: $(BIN)/thinsim
	$(BIN)/thinsim bench --json

clean:
	rm -rf $(VENV) build *.egg-info
