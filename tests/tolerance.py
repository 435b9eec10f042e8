"""FlashAttention's tolerance rule, shared by the kernel tests.

A result in dtype X passes if  max|out - oracle| <= 2 * max|baseline - oracle| + atol,  where the oracle is the
reference computed in fp64 from the same (rounded) inputs and the baseline is the same reference computed in X by
PyTorch. atol is the rounding noise of X at the oracle's magnitude (Hopper FA tests), with a floor for fp32, whose
baseline error is near zero although a different, equally valid summation order moves results by a few ulps of the
largest intermediate.
"""
from __future__ import annotations

import torch

_ATOL_EPS_MULTIPLE = {torch.float16: 2.0, torch.bfloat16: 2.0, torch.float32: 64.0, torch.float64: 64.0}


def rounding_atol(oracle: torch.Tensor, dtype: torch.dtype) -> float:
    finite = oracle[torch.isfinite(oracle)]
    magnitude = float(finite.abs().max()) if finite.numel() else 0.0
    return _ATOL_EPS_MULTIPLE[dtype] * torch.finfo(dtype).eps * max(magnitude, 1.0)


def max_abs_error(x: torch.Tensor, oracle: torch.Tensor) -> float:
    x64, o64 = x.to(torch.float64), oracle.to(torch.float64)
    same_inf = torch.isinf(o64) & (x64 == o64)
    diff = (x64 - o64).abs().masked_fill(same_inf, 0.0)
    return float(diff.max()) if diff.numel() else 0.0


def assert_fa_rule(name: str, out: torch.Tensor, baseline: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype,
                   input_noise: float = 0.0):
    """``input_noise``: the rounding noise the result inherits from 16-bit intermediates that are not its own dtype
    (an fp32 loss over bf16 logits), for shapes so small that the baseline's error can be a lucky near-zero."""
    assert out.shape == oracle.shape, f"{name}: shape {tuple(out.shape)} != {tuple(oracle.shape)}"
    assert torch.equal(torch.isinf(out), torch.isinf(oracle)), f"{name}: -inf pattern differs from the oracle"
    assert not torch.isnan(out).any(), f"{name}: NaN in result"
    err = max_abs_error(out, oracle)
    base_err = max_abs_error(baseline, oracle)
    bound = 2 * base_err + rounding_atol(oracle, dtype) + input_noise
    assert err <= bound, f"{name}: max error {err:.3g} > bound {bound:.3g} (baseline error {base_err:.3g})"
