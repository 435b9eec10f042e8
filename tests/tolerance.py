"""FlashAttention's tolerance rule, shared by the kernel tests.

A result in dtype X passes if  max|out - oracle| <= 2 * max|baseline - oracle| + atol,  where the oracle is the
reference computed in fp64 from the same (rounded) inputs and the baseline is the same reference computed in X by
PyTorch. atol is the rounding noise of X at the oracle's magnitude (Hopper FA tests), with a floor for fp32, whose
baseline error is near zero although a different, equally valid summation order moves results by a few ulps of the
largest intermediate.
"""
from __future__ import annotations

from typing import NamedTuple

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


class Comparison(NamedTuple):
    """One output of a backend next to the same-precision reference (baseline) and the fp64 reference (oracle);
    ``dtype`` is the precision the rule's atol is taken in."""
    name: str
    out: torch.Tensor
    baseline: torch.Tensor
    oracle: torch.Tensor
    dtype: torch.dtype


class RuleErrors(NamedTuple):
    error: float  # max |out - oracle|
    baseline_error: float  # max |baseline - oracle|
    bound: float  # 2 * baseline_error + atol (+ input noise)


def fa_rule_errors(out: torch.Tensor, baseline: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype,
                   input_noise: float = 0.0) -> RuleErrors:
    """``input_noise``: the rounding noise the result inherits from 16-bit intermediates that are not its own dtype
    (an fp32 loss over bf16 logits), for shapes so small that the baseline's error can be a lucky near-zero."""
    base_err = max_abs_error(baseline, oracle)
    bound = 2 * base_err + rounding_atol(oracle, dtype) + input_noise
    return RuleErrors(max_abs_error(out, oracle), base_err, bound)


def rule_violation(comparison: Comparison, input_noise: float = 0.0) -> str | None:
    """None if ``comparison`` passes the rule, else why not."""
    name, out, baseline, oracle, dtype = comparison
    if out.shape != oracle.shape:
        return f"{name}: shape {tuple(out.shape)} != {tuple(oracle.shape)}"
    if not torch.equal(torch.isinf(out), torch.isinf(oracle)):
        return f"{name}: -inf pattern differs from the oracle"
    if torch.isnan(out).any():
        return f"{name}: NaN in result"
    err, base_err, bound = fa_rule_errors(out, baseline, oracle, dtype, input_noise)
    if not err <= bound:
        return f"{name}: max error {err:.3g} > bound {bound:.3g} (baseline error {base_err:.3g})"
    return None


def assert_fa_rule(name: str, out: torch.Tensor, baseline: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype,
                   input_noise: float = 0.0):
    violation = rule_violation(Comparison(name, out, baseline, oracle, dtype), input_noise)
    assert violation is None, violation
