#!/usr/bin/env bash
# The GPU machine's software stack on CPU (requirements-device-image.txt: torch 2.11, triton 3.6, transformers
# 5.17), so that CI proves the code on the versions a GPU check will run with, not only on the newer CPU pins:
# the interpreted Triton kernels, the torch paths of both ops and the sdpa attention (its private aten ops pinned),
# the Quiet-STaR step against the official test vector, and the ahead-of-time sm_90 compile (with its static rules)
# of every Triton configuration by triton 3.6, and the evaluation against the official code's numbers.
# .ci/run calls it after the main test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/make_venv.sh .venv-device requirements-device-image.txt
# Editable and without the CUDA extension (torch here is a CUDA build and nvcc may be present).
QUIETSTAR_BUILD_CUDA=0 .venv-device/bin/python -m pip install --quiet --disable-pip-version-check \
  --no-build-isolation --no-deps -e .
.venv-device/bin/python -c "import torch, triton, transformers; print('device-image lane: torch', torch.__version__, \
'triton', triton.__version__, 'transformers', transformers.__version__)"
status=0
.venv-device/bin/python -m pytest -q -p no:cacheprovider -k "not cuda" \
  tests/test_attention_backends.py tests/test_loss_backends.py tests/test_mask.py \
  tests/test_loss_official_vector.py tests/test_quietstar.py tests/test_model_families.py tests/test_aot_compile.py \
  tests/test_sdpa_backend.py tests/test_official_eval.py tests/test_cot_eval.py \
  || status=$?
[ "$status" -eq 5 ] && echo "error: pytest collected no tests" >&2
exit "$status"
