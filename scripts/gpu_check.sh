#!/usr/bin/env bash
# The GPU check, one script: build the CUDA extension, GPU tests (bf16, determinism and offsets past 2**31
# included; impl="cuda" must not skip), compute-sanitizer on one small case of every kernel, benchmarks, and the
# long property-based profile; logs and CSVs go to $OUT.
# Run on a CUDA machine whose python3 already has a CUDA torch and triton, e.g. through the device tool:
#   OUT=/some/dir bash scripts/gpu_check.sh
# STAGES picks a subset (default: all, in this order, most important first) so that a short device lease can split
# the work over consecutive calls; the built extension stays in the tree between calls on a warm machine:
#   STAGES="build tests" bash scripts/gpu_check.sh; STAGES="sanitizer bench" bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 QUIETSTAR_REQUIRE_CUDA_EXTENSION=1
PY=${PYTHON:-python3}
STAGES=" ${STAGES:-build tests sanitizer bench fuzz} "
stage() { [[ "$STAGES" == *" $1 "* ]]; }
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -2
} > "$OUT/versions.txt" 2>&1
if stage build; then
  start=$(date +%s)
  QUIETSTAR_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} $PY -m pip install --no-build-isolation --no-deps -e . \
    > "$OUT/install.log" 2>&1 || { tail -50 "$OUT/install.log"; exit 1; }
  echo "extension build: $(( $(date +%s) - start )) s" | tee -a "$OUT/versions.txt"
fi
status=0
if stage tests; then
  # CPU-only files (AOT compile, the CUDA emulation, SmolLM2 and training runs on CPU) are CI's, not the GPU's.
  $PY -m pytest -q tests --ignore=tests/test_aot_compile.py --ignore=tests/test_cuda_kernels_emulated.py \
    --ignore=tests/test_smollm2.py --ignore=tests/test_training.py 2>&1 | tee "$OUT/tests.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if ! stage sanitizer; then
  :
elif [ -n "$SANITIZER" ]; then
  for tool in memcheck racecheck; do
    for impl in cuda triton; do
      "$SANITIZER" --tool "$tool" --error-exitcode 9 $PY scripts/sanitizer_cases.py --impl "$impl" \
        > "$OUT/sanitizer_${tool}_${impl}.log" 2>&1 || { status=1; tail -20 "$OUT/sanitizer_${tool}_${impl}.log"; }
    done
  done
else
  echo "compute-sanitizer not found" | tee "$OUT/sanitizer_missing.log"; status=1
fi
if stage bench; then
  for bench in "bench_attention.py --preset gpu-target" "bench_loss.py" "bench_step.py --max-len 4096"; do
    name=${bench%%.py*}
    $PY benchmarks/$bench --out "$OUT" 2>&1 | tee "$OUT/$name.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  done
fi
if stage fuzz; then
  QUIETSTAR_FUZZ_PROFILE=long $PY -m pytest -q tests/test_fuzz.py 2>&1 | tee "$OUT/fuzz_long.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
exit $status
