# The two commands of the README: `make run` and `make test`. Both build what
# they need into .venv from nothing, and rebuild the core when a .pyx/.pxd changes.
# Further steps of `make test` (conformance, browser, wheel) live in mk/*.mk.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORE   := $(wildcard wsrelay/_core/*.pyx wsrelay/_core/*.pxd wsrelay/_core/*.h wsrelay/_core/includes/*.pxd)
PYTEST_ARGS ?=

# mk/*.mk append to these: prerequisites of the pytest run, and steps after it.
TEST_PREREQS :=
TEST_STEPS   :=

.PHONY: all build run test test-unit lint bench clean

all: build

include $(sort $(wildcard mk/*.mk))

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	touch $@

$(VENV)/.deps: $(VENV)/.created requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(CORE)
	$(BIN)/pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	$(BIN)/python setup.py -q build_ext --inplace
	touch $@

build: $(VENV)/.built

# The demo runs with permessage-deflate on (browsers offer it); WSRELAY_COMPRESSION=off make run turns it off.
run: build $(if $(WSRELAY_WORKERS)$(WSRELAY_CLUSTER_URL),nats)
	WSRELAY_COMPRESSION=$${WSRELAY_COMPRESSION:-on} $(BIN)/wsrelay serve examples/chat/app.yaml

lint: build
	$(BIN)/ruff check wsrelay tests bench examples

test-unit: build $(TEST_PREREQS)
	$(BIN)/ruff check wsrelay tests bench examples
	$(BIN)/python -m pytest -q tests $(PYTEST_ARGS)

test: test-unit $(TEST_STEPS)

bench: build
	$(BIN)/python -m bench runtime

clean:
	rm -rf $(VENV) build dist wsrelay/_core/*.c wsrelay/_core/*.so
