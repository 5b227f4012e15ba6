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

.PHONY: all build dev run test test-unit lint bench clean

all: build

include $(sort $(wildcard mk/*.mk))

# The venv's own pip is recent enough; setuptools comes from requirements-run.txt.
$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	touch $@

# What the demo needs (`make run`), then the rest for tests and benchmarks.
$(VENV)/.deps-run: $(VENV)/.created requirements-run.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-run.txt
	touch $@

$(VENV)/.deps: $(VENV)/.deps-run requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The package and the `wsrelay` command, as an editable install that compiles
# nothing (setup.py: WSRELAY_SKIP_EXTENSIONS); .built compiles the core in place,
# in parallel (one job per core) and only what changed.
$(VENV)/.installed: $(VENV)/.deps-run setup.py pyproject.toml
	WSRELAY_SKIP_EXTENSIONS=1 $(BIN)/pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

$(VENV)/.built: $(VENV)/.installed $(CORE)
	$(BIN)/python setup.py -q build_ext --inplace
	touch $@

build: $(VENV)/.built

# build, plus what tests and benchmarks use
dev: build $(VENV)/.deps

# The publish benchmark's peers (Django Channels, python-socketio) and their redis-server (mk/redis.mk).
$(VENV)/.deps-bench: $(VENV)/.deps requirements-bench.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-bench.txt
	touch $@

# The demo runs with permessage-deflate on (browsers offer it); WSRELAY_COMPRESSION=off make run turns it off.
run: build $(if $(WSRELAY_WORKERS)$(WSRELAY_CLUSTER_URL),nats)
	WSRELAY_COMPRESSION=$${WSRELAY_COMPRESSION:-on} $(BIN)/wsrelay serve examples/chat/app.yaml

lint: dev
	$(BIN)/ruff check wsrelay tests bench examples

test-unit: dev $(TEST_PREREQS)
	$(BIN)/ruff check wsrelay tests bench examples
	$(BIN)/python -m pytest -q tests $(PYTEST_ARGS)

test: test-unit $(TEST_STEPS)

bench: dev $(VENV)/.deps-bench redis
	$(BIN)/python -m bench runtime

clean:
	rm -rf $(VENV) build dist wsrelay/_core/*.c wsrelay/_core/*.so
