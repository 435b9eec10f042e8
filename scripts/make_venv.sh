#!/usr/bin/env bash
# bash scripts/make_venv.sh DIR REQUIREMENTS: creates the virtual environment DIR once, with $PYTHON (default
# python3), and installs the pinned REQUIREMENTS file into it. Idempotent; the setup scripts share it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$1 requirements=$2
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
