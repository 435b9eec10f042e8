#!/usr/bin/env bash
# Set up the CPU environment and run the test suite (Triton kernels run in its CPU interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
fi
exit "$status"
