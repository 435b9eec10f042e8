#!/usr/bin/env bash
# Compile and link the CUDA extension quietstar_fast._C against the CUDA build of torch in .venv-cuda (no GPU
# needed), for sm_80 (+PTX) and sm_90a unless TORCH_CUDA_ARCH_LIST says otherwise, then run its CPU-side tests
# (import, op registration, argument validation, the CPU-tensor error, fake kernels). CI runs it after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/make_venv.sh .venv-cuda requirements-cuda-build.txt
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0+PTX;9.0a"}
export MAX_JOBS=${MAX_JOBS:-2}
start=$(date +%s)
# A regular install, not an editable one: the .so lands in .venv-cuda only, never in the source tree that the CPU
# environment imports (a .so built against another torch does not load there).
QUIETSTAR_BUILD_CUDA=1 .venv-cuda/bin/python -m pip install --quiet --disable-pip-version-check \
  --no-build-isolation --no-deps .
echo "built quietstar_fast._C for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST in $(( $(date +%s) - start )) s"
# pytest's console script keeps the source tree off sys.path, so the tests import the installed package.
QUIETSTAR_REQUIRE_CUDA_EXTENSION=1 .venv-cuda/bin/pytest -q -p no:cacheprovider tests/test_cuda_extension.py
