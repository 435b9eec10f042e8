"""The optional CUDA extension ``quietstar_fast._C``: loading it, its fake (meta) kernels, and the error that says
how to build it.

Importing ``_C`` registers the ops ``torch.ops.quietstar_fast.{thought_attention_fwd, thought_attention_bwd,
linear_softmax_fwd, linear_softmax_grad}``. The fake kernels below give torch.compile their output shapes.
"""
from __future__ import annotations

import functools
import importlib

import torch

from .cuda_checks import CheckedOps

BUILD_HINT = (
    "build it with a CUDA build of torch and the CUDA toolkit (nvcc) installed: "
    "QUIETSTAR_BUILD_CUDA=1 pip install --no-build-isolation -e . (see csrc/README.md); "
    "or use impl='triton' / impl='torch'"
)


@functools.cache
def _import_error() -> str | None:
    """None once ``_C`` is imported and its fakes registered, else why it could not be imported."""
    try:
        importlib.import_module("quietstar_fast._C")
    except ImportError as error:  # not built, or built against another torch
        return f"{type(error).__name__}: {error}"
    _register_fakes()
    return None


def cuda_extension_available() -> bool:
    return _import_error() is None


def ops() -> CheckedOps:
    """``torch.ops.quietstar_fast`` behind Python-side argument checks (``cuda_checks``), with a clear error when the
    extension is missing."""
    error = _import_error()
    if error is not None:
        raise RuntimeError(f"impl='cuda' needs the extension quietstar_fast._C, which could not be imported "
                           f"({error}); {BUILD_HINT}")
    return CheckedOps()


def _register_fakes() -> None:
    register = torch.library.register_fake

    @register("quietstar_fast::thought_attention_fwd")
    def _(q, k, v, key_valid, prefix_len, sliding_window, softmax_scale):
        # The real ops return contiguous tensors whatever the input strides (HF passes transposed views).
        return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)

    @register("quietstar_fast::thought_attention_bwd")
    def _(q, k, v, out, lse, grad_out, grad_lse, key_valid, prefix_len, sliding_window, softmax_scale):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    @register("quietstar_fast::linear_softmax_fwd")
    def _(hidden, weight, targets, noise, seed, banned, inv_t, sample_scale):
        rows = hidden.shape[0]
        tokens = hidden.new_empty((0,) if targets is not None else (rows,), dtype=torch.int64)
        return hidden.new_empty(rows, dtype=torch.float32), hidden.new_empty(rows, dtype=torch.float32), tokens

    @register("quietstar_fast::linear_softmax_grad")
    def _(hidden, weight, lse, targets, coef, banned, inv_t):
        return hidden.new_empty(hidden.shape[0], weight.shape[0])
