#!/usr/bin/env bash
# Set up the CPU environment and run the main job: the attention benchmark on its small default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
.venv/bin/python benchmarks/bench_attention.py "$@"
