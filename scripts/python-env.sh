#!/usr/bin/env bash
# Prints the path of a Python interpreter that has the example clients' dependencies
# (examples/clients/requirements.txt), creating a virtual environment under target/py on first
# use. Nothing is installed globally; only python3 (with its venv module) must be present.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MYAGENT_VENV:-target/py}
REQ=examples/clients/requirements.txt
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: the test clients (a2a-sdk, ag-ui-validate) need Python 3.11 or later; found $(python3 --version 2>&1)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$VENV/.requirements" 2>/dev/null; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >&2; then
    echo "error: cannot create a Python virtual environment in $VENV; install Python 3 with its venv module (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ" >&2
  cp "$REQ" "$VENV/.requirements"
fi
echo "$VENV/bin/python"
