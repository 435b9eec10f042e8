#!/usr/bin/env bash
# The GPU check, one script: install, GPU tests (bf16 included), benchmarks; logs and CSVs go to $OUT.
# Run on a CUDA machine whose python3 already has a CUDA torch and triton, e.g. through the device tool:
#   OUT=/some/dir bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$OUT/versions.txt" 2>&1
$PY -m pip install --quiet --no-build-isolation --no-deps -e . > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
status=0
$PY -m pytest -q --timeout=600 tests --ignore=tests/test_aot_compile.py 2>&1 | tee "$OUT/tests.log" || status=1
$PY benchmarks/bench_attention.py --preset gpu-target --out "$OUT" 2>&1 | tee "$OUT/bench_attention.log" || status=1
$PY benchmarks/bench_loss.py --out "$OUT" 2>&1 | tee "$OUT/bench_loss.log" || status=1
$PY benchmarks/bench_step.py --max-len 4096 --out "$OUT" 2>&1 | tee "$OUT/bench_step.log" || status=1
exit $status
