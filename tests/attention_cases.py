"""Shared problem generator for the thought-attention tests: inputs, upstream gradients, and one fwd+bwd run."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from quietstar_fast import thought_attention
from tolerance import Comparison


@dataclass(frozen=True)
class Case:
    batch: int
    q_heads: int
    kv_heads: int
    n: int  # prefix length
    a: int  # stream steps in k/v
    m: int  # query steps
    d: int
    padding: str | None = None  # None, "right" (the official collator), "left" (rows with no key), "holes"
    window: int | None = None

    def __str__(self) -> str:
        pad = self.padding or "nopad"
        heads = f"H{self.q_heads}/{self.kv_heads}"
        return f"B{self.batch}-{heads}-n{self.n}-a{self.a}-m{self.m}-d{self.d}-{pad}-W{self.window}"


def key_padding_mask(case: Case, device) -> torch.Tensor | None:
    if case.padding is None:
        return None
    mask = torch.ones(case.batch, case.n, dtype=torch.bool, device=device)
    for b in range(case.batch):
        count = (3 * b + case.n // 4) % case.n
        if case.padding == "right":
            mask[b, case.n - count:] = False
        elif case.padding == "left":
            mask[b, :count] = False
        else:
            mask[b] = torch.rand(case.n, device=device) > 0.3
    return mask


@dataclass
class Problem:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    grad_out: torch.Tensor
    grad_lse: torch.Tensor
    mask: torch.Tensor | None
    case: Case

    def cast(self, dtype: torch.dtype) -> "Problem":
        return Problem(*(t.to(dtype) for t in (self.q, self.k, self.v, self.grad_out, self.grad_lse)),
                       self.mask, self.case)


def make_problem(case: Case, dtype: torch.dtype, device) -> Problem:
    """Inputs rounded to ``dtype`` (the fp64 oracle then starts from the very same values)."""
    def randn(*shape):
        return torch.randn(*shape, device=device).to(dtype)

    q = randn(case.batch, case.q_heads, case.m * case.n, case.d)
    k = randn(case.batch, case.kv_heads, (case.a + 1) * case.n, case.d)
    v = randn(case.batch, case.kv_heads, (case.a + 1) * case.n, case.d)
    grad_out = randn(*q.shape)
    grad_lse = randn(case.batch, case.q_heads, case.m * case.n)
    return Problem(q, k, v, grad_out, grad_lse, key_padding_mask(case, device), case)


def run(problem: Problem, impl: str) -> dict[str, torch.Tensor]:
    """Forward + backward through o and lse; returns o, lse, dq, dk, dv."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (problem.q, problem.k, problem.v))
    out, lse = thought_attention(
        q, k, v, prefix_len=problem.case.n, key_padding_mask=problem.mask, sliding_window=problem.case.window,
        return_lse=True, impl=impl,
    )
    # Rows that see no key have lse = -inf; they take no LSE gradient.
    lse_term = (lse.masked_fill(torch.isinf(lse), 0.0) * problem.grad_lse.to(lse.dtype)).sum()
    total = (out.to(torch.float64) * problem.grad_out.to(torch.float64)).sum() + lse_term
    dq, dk, dv = torch.autograd.grad(total, (q, k, v))
    return {"o": out.detach(), "lse": lse.detach(), "dq": dq, "dk": dk, "dv": dv}


OUTPUT_NAMES = ("o", "lse", "dq", "dk", "dv")


def attention_comparisons(case: Case, dtype: torch.dtype, impl: str, device) -> list[Comparison]:
    """Every output of ``impl`` against the same-precision and the fp64 reference, from the same rounded inputs."""
    problem = make_problem(case, dtype, device)
    result = run(problem, impl)
    baseline = run(problem, "reference")
    oracle = run(problem.cast(torch.float64), "reference")
    # lse is fp32 in every backend: its baseline is the fp32 statistic of the reference.
    return [Comparison(name, result[name], baseline[name], oracle[name], torch.float32 if name == "lse" else dtype)
            for name in OUTPUT_NAMES]
