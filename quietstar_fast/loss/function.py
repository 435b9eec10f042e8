"""The autograd function behind both LM-head ops, generic over a backend ("torch", "triton" or "cuda").

For z = hidden @ weight^T it returns nll = lse(z * inv_t) - inv_t * z[target]: the cross-entropy when targets are
given (inv_t = 1), or minus the policy log-prob of a Gumbel-max sample when they are not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .._platform import statistics_dtype
from .chunked import chunked_linear_backward, chunked_loss_and_gradients, torch_forward, torch_grad_logits


@dataclass(frozen=True)
class Backend:
    """forward(hidden, weight, targets, noise, generator, banned, inv_t, sample_scale) -> (lse, picked, tokens);
    grad_logits(hidden_chunk, weight, lse, targets, coef, banned, inv_t) -> d loss / d logits of the chunk."""

    name: str
    forward: Callable
    grad_logits: Callable


TORCH = Backend("torch", torch_forward, torch_grad_logits)


def _device_seed(hidden: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A one-element int64 seed for in-kernel Philox noise, drawn where the generator lives and kept on the device:
    no host synchronisation."""
    device = generator.device if generator is not None else hidden.device
    return torch.randint(0, 2**62, (1,), generator=generator, device=device).to(hidden.device)


def _fused_backend(name: str, ops) -> Backend:
    """A Backend over ops with the schema of ``quietstar_fast_triton::linear_softmax_*`` (Triton custom ops) or
    ``quietstar_fast::linear_softmax_*`` (the CUDA extension): sampling draws its seed on the device."""

    def forward(hidden, weight, targets, noise, generator, banned, inv_t, sample_scale):
        seed = _device_seed(hidden, generator) if targets is None and noise is None else None
        lse, picked, tokens = ops.linear_softmax_fwd(
            hidden.contiguous(), weight.contiguous(), None if targets is None else targets.long().contiguous(),
            None if noise is None else noise.float(), seed, banned, inv_t, sample_scale)
        return lse, picked, tokens if targets is None else None

    def grad_logits(hidden, weight, lse, targets, coef, banned, inv_t):
        return ops.linear_softmax_grad(hidden.contiguous(), weight.contiguous(), lse.float().contiguous(),
                                       targets.long().contiguous(), coef.float().contiguous(), banned, inv_t)

    return Backend(name, forward, grad_logits)


def triton_backend() -> Backend:
    from . import triton_ops

    return _fused_backend("triton", triton_ops)


def cuda_backend() -> Backend:
    from ..cuda_ext import ops

    return _fused_backend("cuda", ops())


class _LinearNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, noise, generator, banned, inv_t, sample_scale, ignore_index,
                backend: Backend):
        lse, picked, tokens = backend.forward(hidden, weight, targets, noise, generator, banned, inv_t, sample_scale)
        chosen = targets if tokens is None else tokens
        nll = lse - inv_t * picked
        if ignore_index is not None:
            nll = nll.masked_fill(chosen == ignore_index, 0.0)
        ctx.save_for_backward(hidden, weight, lse, chosen, banned)
        ctx.inv_t, ctx.ignore_index, ctx.backend = inv_t, ignore_index, backend
        ctx.mark_non_differentiable(lse)
        return nll, lse, tokens if tokens is not None else chosen.new_empty(0)

    @staticmethod
    def backward(ctx, grad_nll, _grad_lse, _grad_tokens):
        hidden, weight, lse, chosen, banned = ctx.saved_tensors
        coef = grad_nll
        if ctx.ignore_index is not None:
            coef = coef.masked_fill(chosen == ctx.ignore_index, 0.0)
        grad_hidden, grad_weight = chunked_linear_backward(hidden, weight, lse, chosen, coef, banned, ctx.inv_t,
                                                           ctx.backend.grad_logits, *ctx.needs_input_grad[:2])
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None


def linear_nll(hidden, weight, *, targets=None, noise=None, generator=None, banned=None, inv_t=1.0,
               sample_scale=1.0, ignore_index=None, backend: Backend = TORCH):
    """(nll (N,), lse (N,), tokens (N,) or empty): see the module docstring."""
    return _LinearNLL.apply(hidden, weight, targets, noise, generator, banned, inv_t, sample_scale, ignore_index,
                            backend)


class _WeightedLinearNLL(torch.autograd.Function):
    """sum_i row_weights_i * nll_i with its gradients computed in the forward (one pass, three GEMMs); the backward
    only scales them by the upstream gradient of the scalar."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, row_weights, ignore_index):
        ignored = targets == ignore_index
        coef = row_weights.to(statistics_dtype(hidden.dtype)).masked_fill(ignored, 0.0)
        nll, grad_hidden, grad_weight = chunked_loss_and_gradients(hidden, weight, targets, coef,
                                                                   *ctx.needs_input_grad[:2])
        nll = nll.masked_fill(ignored, 0.0)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(nll)
        return (coef * nll).sum(), nll

    @staticmethod
    def backward(ctx, grad_total, _grad_nll):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_total.to(grad_hidden.dtype if grad_hidden is not None else grad_weight.dtype)
        return (None if grad_hidden is None else grad_hidden * scale,
                None if grad_weight is None else grad_weight * scale, None, None, None)


def weighted_linear_nll(hidden, weight, targets, row_weights, ignore_index):
    """(sum_i row_weights_i * nll_i, nll (N,) not differentiable) for nll_i = CE(hidden_i @ weight^T, target_i),
    0 for ignored rows."""
    return _WeightedLinearNLL.apply(hidden, weight, targets, row_weights, ignore_index)
