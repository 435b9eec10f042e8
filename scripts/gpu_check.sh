#!/usr/bin/env bash
# The GPU check, in two profiles, on a CUDA machine whose python3 already has a CUDA torch and triton (the device
# tool's H100/H200 image; README.md, "The GPU check"):
#   PROFILE=quick OUT=/some/dir bash scripts/gpu_check.sh   # <= 6 minutes, the headline first: versions, the 1B
#                                                           # Quiet-STaR step, the attention and loss headline rows,
#                                                           # the correctness smoke of the Triton and sdpa kernels,
#                                                           # the 7B LoRA step. No extension build (78 s): the CUDA
#                                                           # kernels are the full profile's.
#   PROFILE=full  OUT=/some/dir bash scripts/gpu_check.sh   # the build, the CUDA kernels' smoke and binding tests,
#                                                           # GPU tests, compute-sanitizer, full benchmarks, long fuzz
#   STAGES="tests sanitizer" PROFILE=full ...               # a subset of a profile's steps, e.g. to split the full
#                                                           # profile over consecutive device calls
#   BUDGET_tests=200 STAGES=tests PROFILE=full ...          # a step's budget in seconds, overridden
#   DRY_RUN=1 PROFILE=quick bash scripts/gpu_check.sh       # prints every step with its time budget (CI runs it)
# Every step runs under `timeout` with its budget. Its log and outputs go to $WORK, and after each step $OUT gets
# the step table (steps.csv), the smoke CSV, and a tarball of $WORK (gpu_check_<profile>.tar.gz), so a run stopped
# by an outer time limit still returns what it finished. $OUT stays under the device tool's 8 returned files.
# Exit status: 0 if every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PROFILE=${PROFILE:-quick}
DRY_RUN=${DRY_RUN:-0}
export OUT=${OUT:-benchmarks/results/gpu_check}
export WORK=${GPU_CHECK_WORK:-/tmp/quietstar_gpu_check/$PROFILE}
export PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 QUIETSTAR_REQUIRE_CUDA_EXTENSION=1
# Wheels that the GPU image lacks (scripts/gpu_wheels.sh puts them in .whl/) are installed here, outside the image.
export WHEEL_SITE=/tmp/quietstar_gpu_site

case "$PROFILE" in
  # name:budget_seconds; the quick budgets add up to 360 s. Measured on the H200 (2026-11-30, cold caches): build
  # 78 s, smoke ~100 s with the CUDA kernels (mostly Triton compiling), attention ~45 s for n=256 alone, loss ~85 s
  # for both modes. The steps (1B, 7B) are estimates: a 1B step at B=8, n=256 with checkpointing is ~5e14 FLOPs.
  quick) STEPS="versions:15 wheels:10 step:100 bench_attention:50 bench_loss:50 smoke:60 big_step:75" ;;
  full) STEPS="versions:15 wheels:15 build:150 extension:120 tests:420 sanitizer:300 bench_attention:240 bench_loss:240 bench_step:420 big_step:300 bench_generate:180 fuzz:420" ;;
  *) echo "PROFILE must be quick or full, got '$PROFILE'" >&2; exit 2 ;;
esac
SELECTED=" ${STAGES:-$(for s in $STEPS; do printf '%s ' "${s%%:*}"; done)} "

# ---- the steps: each a function, run in its own bash under timeout, writing to $WORK ----------------------------

versions() {
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', \
triton.__version__); p = torch.cuda.get_device_properties(0); print(p)"
  $PY -c "import transformers; print('transformers', transformers.__version__)"
  nvcc --version | tail -2
  compute-sanitizer --version | head -2
  compute-sanitizer --help > "$WORK/compute_sanitizer_help.txt" 2>&1
}

wheels() {
  if ! ls .whl/*.whl > /dev/null 2>&1; then echo "no wheels in .whl/ (scripts/gpu_wheels.sh): peers skipped"; return 0; fi
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WHEEL_SITE" .whl/*.whl
  ls "$WHEEL_SITE"
}

build() {
  if [ "$PROFILE" = full ] && $PY -c "import quietstar_fast._C" 2> /dev/null; then
    echo "quietstar_fast._C already built on this machine (an earlier call's build step)"; return 0
  fi
  # sm_90a only: the H100/H200 SASS, wgmma allowed; ninja compiles the sources in parallel.
  if QUIETSTAR_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=${MAX_JOBS:-16} \
      $PY -m pip install --no-build-isolation --no-deps -e . && $PY -c "import quietstar_fast._C"; then
    return 0
  fi
  echo "CUDA extension build FAILED; installing without it so that the Triton kernels still run"
  QUIETSTAR_BUILD_CUDA=0 $PY -m pip install -q --no-build-isolation --no-deps -e .
  return 1
}

step() {
  # The headline: a Llama-3.2-1B-shaped step at the paper's settings (B=8, n=256, N=12, T=4, P=2, AdamW), the fast
  # path with checkpointing first, then without it and the official path (an out-of-memory row is a result).
  $PY benchmarks/bench_step.py --preset gpu --models llama1b --seq-len 256 --providers fast-ckpt fast reference \
    --out "$WORK"
}

smoke() {
  # The quick profile has no extension build: the Triton and sdpa kernels; the full profile's extension step adds
  # the CUDA kernels.
  $PY scripts/gpu_smoke.py --impls triton sdpa --out "$WORK/smoke.csv"
}

extension() {
  # The CUDA kernels' smoke, then the extension's binding tests alone, serial and verbose under faulthandler: on the
  # H200 (2026-11-30) its argument-validation tests crashed the process, and this names the crashing case; then the
  # validation tests again under compute-sanitizer's memcheck, which names a bad access if that is the cause.
  local status=0
  $PY scripts/gpu_smoke.py --impls cuda --out "$WORK/smoke_cuda.csv" || status=1
  $PY -X faulthandler -m pytest -v -p no:cacheprovider -p no:xdist tests/test_cuda_extension.py || status=1
  timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -X faulthandler -m pytest -v \
    -p no:cacheprovider -p no:xdist tests/test_cuda_extension.py -k "validates or cpu_tensors" || status=1
  return $status
}

bench_attention() {
  # Quick: n = 256 and 1024 of the gpu-target shape (B=8, 32/8 heads, d=128, a=12, bf16), ours next to the floor
  # (causal SDPA over the prefix) and the official dense path. Full: the whole preset, the CUDA kernels, their
  # target shapes (n up to 8192), and FlexAttention last, in its own file, since it compiles per shape (tens of
  # seconds each) and a budget that stops it keeps every other provider's numbers.
  if [ "$PROFILE" = quick ]; then
    $PY benchmarks/bench_attention.py --n 256 1024 --a 12 --m 1 --batch 8 --q-heads 32 --kv-heads 8 --d 128 \
      --dtype bf16 --providers sdpa_causal_prefix triton sdpa official --tag gpu-target --out "$WORK"
    return
  fi
  $PY benchmarks/bench_attention.py --preset gpu-target --providers triton cuda sdpa official sdpa_causal_prefix \
    torch --out "$WORK" || return 1
  $PY benchmarks/bench_attention.py --preset kernel-target --providers cuda triton sdpa_causal_prefix \
    --out "$WORK" || return 1
  $PY benchmarks/bench_attention.py --preset gpu-target --providers flex --tag flex --out "$WORK"
}

bench_loss() {
  # Quick: training's forward + backward at V=32000, ours first, then the materialised reference, Liger, Cut CE.
  local args=(--rows 8192 --hidden 4096 --vocab 32000 --providers triton reference liger cce --modes fwd_bwd)
  [ "$PROFILE" = full ] && args=(--rows 2048 8192 --hidden 4096 --vocab 32000 128256)
  $PY benchmarks/bench_loss.py "${args[@]}" --out "$WORK"
}

tests() {
  # The CPU-only files (AOT compile, the CUDA emulation, SmolLM2 and training runs on CPU) are CI's. -v names
  # each test as it finishes (a budget that stops the run keeps them); a per-test timeout stops a hang.
  local options=(-v -p no:cacheprovider) status=0
  $PY -c "import pytest_timeout" 2> /dev/null && options+=(--timeout 120)
  # (The extension's binding tests ran alone in the extension step.)
  $PY -c "import xdist" 2> /dev/null && options+=(-n 8)
  $PY -m pytest "${options[@]}" tests --ignore=tests/test_cuda_extension.py --ignore=tests/test_aot_compile.py \
    --ignore=tests/test_cuda_kernels_emulated.py --ignore=tests/test_smollm2.py --ignore=tests/test_training.py \
    --ignore=tests/test_static_sm90.py --ignore=tests/test_gpu_check.py --junitxml="$WORK/tests.xml" || status=1
  return $status
}

sanitizer() {
  # Only our kernels are instrumented (torch's are not ours to check, and instrumenting them costs minutes), one
  # kernel family per run; no caching allocator, so that an access past a tensor's end is past an allocation's end.
  # (--kernel-name kns=<substring of the mangled name>: compute-sanitizer 2025.3 of CUDA 13.0 on the H200 image.)
  local status=0 tool impl family rc log
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  for run in memcheck:cuda memcheck:triton racecheck:cuda synccheck:cuda racecheck:triton synccheck:triton; do
    tool=${run%%:*} impl=${run##*:}
    for family in thought_attention linear_softmax; do
      log="$WORK/sanitizer_${tool}_${impl}_${family}.log"
      timeout 45 compute-sanitizer --tool "$tool" --error-exitcode 9 --kernel-name "kns=$family" \
        $PY scripts/sanitizer_cases.py --impl "$impl" > "$log" 2>&1
      rc=$?
      echo "$tool $impl $family: exit $rc ($(grep -c "========= " "$log") sanitizer lines)"; tail -2 "$log"
      [ $rc -eq 0 ] || status=1
    done
  done
  return $status
}

bench_step() {
  # The whole headline table: llama1b and qwen1.5b at n = 256 and 1024, every provider.
  $PY benchmarks/bench_step.py --preset gpu --out "$WORK"
}

big_step() {
  # The 7B target: Mistral-7B-shaped bf16 model, LoRA r=16, layer checkpointing, B=8 n=256 N=12 T=4 P=2, AdamW,
  # within 80 GB (memory fraction), next to estimate_step_memory's prediction.
  $PY benchmarks/bench_big_step.py --out "$WORK"
}

bench_generate() {
  # Thinking generation with the kept cache against the official per-token recompute (llama1b, B = 1 and 8).
  $PY benchmarks/bench_generate.py --out "$WORK"
}

fuzz() {
  QUIETSTAR_FUZZ_PROFILE=long $PY -m pytest -q -p no:cacheprovider tests/test_fuzz.py
}

export -f versions wheels build step smoke extension bench_attention bench_loss tests sanitizer bench_step big_step \
  bench_generate fuzz

# ---- the runner --------------------------------------------------------------------------------------------------

pack() {  # what $OUT returns: the step table, the smoke CSV, and everything else in one tarball
  cp "$WORK/steps.csv" "$OUT/steps_$PROFILE.csv"
  [ -f "$WORK/smoke.csv" ] && cp "$WORK/smoke.csv" "$OUT/smoke.csv"
  ls "$WORK"/step_*.csv > /dev/null 2>&1 && cp "$WORK"/step_*.csv "$OUT/"
  tar czf "$OUT/.partial.tar.gz" -C "$WORK" . && mv "$OUT/.partial.tar.gz" "$OUT/gpu_check_$PROFILE.tar.gz"
}

if [ "$DRY_RUN" = 1 ]; then
  total=0
  echo "PROFILE=$PROFILE (dry run): step, budget"
  for entry in $STEPS; do
    name=${entry%%:*} budget_var=BUDGET_${entry%%:*}
    budget=${!budget_var:-${entry##*:}}
    [[ "$SELECTED" == *" $name "* ]] || continue
    # Each step runs in `bash -c`: its function must be exported, not only defined.
    bash -c "declare -F $name" > /dev/null || { echo "step $name has no exported function" >&2; exit 1; }
    printf '  %-16s %4d s\n' "$name" "$budget"
    total=$(( total + budget ))
  done
  echo "  total            $total s"
  # The Python entry points the steps call must at least parse their arguments here.
  for script in scripts/gpu_smoke.py benchmarks/bench_attention.py benchmarks/bench_loss.py \
                benchmarks/bench_step.py benchmarks/bench_big_step.py benchmarks/bench_generate.py \
                scripts/sanitizer_cases.py; do
    $PY "$script" --help > /dev/null || { echo "$script --help failed" >&2; exit 1; }
  done
  exit 0
fi

mkdir -p "$OUT" "$WORK"
echo "step,budget_s,seconds,exit" > "$WORK/steps.csv"
status=0
for entry in $STEPS; do
  name=${entry%%:*} budget_var=BUDGET_${entry%%:*}
  budget=${!budget_var:-${entry##*:}}
  [[ "$SELECTED" == *" $name "* ]] || continue
  echo "=== $name (budget $budget s) $(date -u +%T)"
  start=$(date +%s)
  timeout --kill-after=10 "$budget" bash -c "$name" > "$WORK/$name.log" 2>&1
  rc=$?
  echo "$name,$budget,$(( $(date +%s) - start )),$rc" >> "$WORK/steps.csv"
  tail -n 30 "$WORK/$name.log"
  [ $rc -eq 124 ] && echo "--- $name: stopped at its budget of $budget s"
  [ $rc -eq 0 ] || status=1
  # Later steps import the wheels installed by the wheels step.
  [ "$name" = wheels ] && [ -d "$WHEEL_SITE" ] && export PYTHONPATH="$WHEEL_SITE${PYTHONPATH:+:$PYTHONPATH}"
  pack
done
echo "=== steps"; cat "$WORK/steps.csv"
exit $status
