#!/usr/bin/env bash
# Install Autobahn|Testsuite's `wstest` (the reference WebSocket conformance
# suite) and print the path of a launcher for it.
#
#   tools/autobahn/install.sh [DIR]     DIR defaults to $AUTOBAHN_DIR, then
#                                       ~/.cache/autobahn-testsuite
#
# wstest runs on Python 2.7 only. The interpreter is $PY2 when set, otherwise
# pyenv's 2.7.18, otherwise the first `python2.7` on PATH. Its dependencies are
# pinned to the versions of the suite's own requirements.txt (the PyPI sdist
# does not ship that file, and unpinned installs pull releases that no longer
# support Python 2). A finished install is marked with DIR/.done and reused.
set -euo pipefail

dir=${1:-${AUTOBAHN_DIR:-$HOME/.cache/autobahn-testsuite}}

is_py27() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' >/dev/null 2>&1; }

if [ -z "${PY2:-}" ]; then
  candidates=()
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)/versions/2.7.18/bin/python")
  fi
  candidates+=("$HOME/.pyenv/versions/2.7.18/bin/python" python2.7)
  for candidate in "${candidates[@]}"; do
    if is_py27 "$candidate"; then
      PY2=$(command -v "$candidate")
      break
    fi
  done
fi
if [ -z "${PY2:-}" ] || ! is_py27 "$PY2"; then
  echo "tools/autobahn/install.sh: no Python 2.7 interpreter found; set PY2=/path/to/python2.7" >&2
  exit 2
fi

pins=(
  txaio==2.1.0 incremental==16.10.1 pyOpenSSL==19.1.0 cryptography==3.3.2
  Twisted==19.10.0 zope.interface==4.6.0 jinja2==2.11.3 markupsafe==1.1.1
  Werkzeug==1.0.1 klein==17.10.0 service_identity==18.1.0 unittest2==1.1.0
  six==1.16.0 "autobahn[twisted]==0.10.9" autobahntestsuite==25.10.1
)

if [ ! -f "$dir/.done" ]; then
  mkdir -p "$dir"
  if ! "$PY2" -m pip install --quiet --disable-pip-version-check --target "$dir/site" "${pins[@]}" \
       >"$dir/install.log" 2>&1; then
    echo "tools/autobahn/install.sh: pip failed, last lines of $dir/install.log:" >&2
    tail -n 20 "$dir/install.log" >&2
    exit 1
  fi
  # The launcher puts the private site directory on Python 2's path and runs
  # wstest's entry point with the caller's arguments.
  cat >"$dir/wstest" <<LAUNCHER
#!/usr/bin/env bash
exec "$PY2" -c 'import site, sys; site.addsitedir(sys.argv.pop(1)); sys.argv[0] = "wstest"; from autobahntestsuite.wstest import run; run()' "$dir/site" "\$@"
LAUNCHER
  chmod +x "$dir/wstest"
  touch "$dir/.done"
fi

echo "$dir/wstest"
