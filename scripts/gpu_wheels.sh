#!/usr/bin/env bash
# Downloads the wheels that the device tool's GPU image lacks into .whl/ (git-ignored): the peers that
# benchmarks/bench_loss.py measures side by side, and peft (with accelerate and psutil) for the LoRA step. The GPU check installs them from there (scripts/gpu_check.sh,
# step "wheels"); name .whl in the device call's carry. Needs the network (run it here, not on the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  liger-kernel==0.8.5 cut-cross-entropy==25.1.1 peft==0.21.2 accelerate==1.15.0 psutil==7.1.3
ls -l .whl
