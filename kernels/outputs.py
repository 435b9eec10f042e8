"""Output buffers of the kernel launchers. With QUIETSTAR_POISON_OUTPUTS=1 (the test suite sets it) each starts as
NaN (floating point) or -1 (integers), so an element that a kernel never writes fails the tests instead of reading
as a plausible zero; otherwise they are uninitialised, as torch.empty."""
from __future__ import annotations

import os

import torch


def output_buffer(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if os.environ.get("QUIETSTAR_POISON_OUTPUTS", "0") != "1":
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
