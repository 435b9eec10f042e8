"""Backend selection shared by the ops: where Triton kernels can run (a CUDA device, or Triton's CPU interpreter
under TRITON_INTERPRET=1), which impl "auto" picks, and the precision of softmax statistics."""
from __future__ import annotations

import importlib.util
import os

import torch


def triton_interpreting() -> bool:
    """True when Triton's interpreter is on; it must be set before any kernel module is imported."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_can_run_on(device: torch.device) -> bool:
    if not triton_installed():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreting())


IMPLS = ("auto", "triton", "cuda", "torch", "reference")
ATTENTION_IMPLS = IMPLS + ("sdpa",)
# "auto" for CPU attention, from benchmarks/results/attention_cpu_cpu-auto.csv (the shapes of a Quiet-STaR step,
# torch time / sdpa time, forward + backward, 12 shapes per dtype and n): fp32 1.03-3.69x at n = 64..256 (and faster
# at every n up to 4096 in the sweep); bf16 1.00-2.20x at n = 64 and 128, 0.93-1.92x at 256 (one shape below 1); fp16
# 0.92-1.71x at n = 64 (four shapes below 1), 0.80-1.60x at 128 (one), 1.04-1.98x at 256. Since issue #28 the
# fused CPU backward runs 16-bit inputs in fp32, which also made it faster than PyTorch's own 16-bit CPU backward.
SDPA_MIN_PREFIX_FP16_CPU = 256


def resolve_impl(impl: str, x: torch.Tensor, *, attention: bool = False, prefix_len: int = 0) -> str:
    """The backend ``impl`` means for inputs like ``x`` (``attention``: for ``thought_attention``, which also has
    "sdpa"; ``prefix_len`` its n). "auto" is triton for CUDA tensors (not fp64); for CPU attention it is sdpa in
    fp32 and bf16, and in fp16 from n = ``SDPA_MIN_PREFIX_FP16_CPU``; else torch. Raises a clear error when the request
    cannot run here."""
    allowed = ATTENTION_IMPLS if attention else IMPLS
    if impl not in allowed:
        raise ValueError(f"impl must be one of {allowed}, got {impl!r}")
    if impl == "auto":
        if x.device.type == "cuda" and triton_installed() and x.dtype != torch.float64:
            return "triton"
        sdpa_wins = x.dtype in (torch.float32, torch.bfloat16) or (
            x.dtype == torch.float16 and prefix_len >= SDPA_MIN_PREFIX_FP16_CPU)
        return "sdpa" if attention and x.device.type == "cpu" and sdpa_wins else "torch"
    if impl == "cuda":
        if x.device.type != "cuda":
            raise ValueError(f"impl='cuda' needs CUDA tensors; the inputs are on {x.device}. Use impl='torch' on CPU.")
        if x.dtype == torch.float64:
            raise TypeError("impl='cuda' supports float16, bfloat16 and float32; use impl='torch' for float64")
        from .cuda_ext import ops

        ops()  # raises, with build instructions, when the extension is missing
    if impl == "triton":
        if not triton_can_run_on(x.device):
            raise ValueError(
                f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before import for CPU tensors); "
                f"the inputs are on {x.device}. Use impl='torch' on CPU."
            )
        if x.dtype == torch.float64:
            raise TypeError("impl='triton' supports float16, bfloat16 and float32; use impl='torch' for float64")
    return impl


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics and accumulators: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
