"""Which backends the parametrised tests run: "cuda" needs a GPU and the built extension quietstar_fast._C.

Without a GPU the cuda cases skip (or, where a test asks for ``every_backend``, run through the CPU emulation of
the CUDA kernels). On a GPU they run; set QUIETSTAR_REQUIRE_CUDA_EXTENSION=1 (the GPU check script does) so that a
missing extension fails them instead of skipping them.
"""
import os

import pytest
import torch

from quietstar_fast.cuda_ext import cuda_extension_available

REQUIRE_CUDA_EXTENSION = os.environ.get("QUIETSTAR_REQUIRE_CUDA_EXTENSION", "0") == "1"


def cuda_kernels_runnable() -> bool:
    return torch.cuda.is_available() and (REQUIRE_CUDA_EXTENSION or cuda_extension_available())


needs_cuda_kernels = pytest.mark.skipif(
    not cuda_kernels_runnable(), reason="impl='cuda' needs a GPU and the extension quietstar_fast._C"
)
CUDA = pytest.param("cuda", marks=needs_cuda_kernels)
KERNEL_IMPLS = ["triton", CUDA]


def every_backend(attention: bool = False):
    """Backend ids for tests that run every kernel this machine can run: torch, triton (interpreted on CPU), and the
    CUDA kernels (on a GPU, or emulated on CPU as "cuda-emulated"); for ``attention`` tests also sdpa (PyTorch's
    fused kernels plus the exact merge), which only ``thought_attention`` has. The ``impl_for`` fixture
    (conftest.py) maps an id to the impl string."""
    from emulated_cuda import emulation_unavailable_reason

    backends = [pytest.param("torch", id="torch"), pytest.param("triton", id="triton")]
    if attention:
        backends.append(pytest.param("sdpa", id="sdpa"))
    if torch.cuda.is_available():
        backends.append(pytest.param("cuda", id="cuda", marks=needs_cuda_kernels))
    else:
        reason = emulation_unavailable_reason()
        backends.append(pytest.param("cuda-emulated", id="cuda-emulated", marks=pytest.mark.skipif(
            reason is not None, reason=f"CUDA emulation: {reason}")))
    return backends

