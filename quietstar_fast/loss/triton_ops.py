"""The Triton LM-head kernels as torch.library custom ops (namespace ``quietstar_fast_triton``): opaque to
torch.compile, with fake kernels for their output shapes. Autograd stays in ``function._LinearNLL``, whose chunked
backward calls ``linear_softmax_grad`` once per chunk of rows.
"""
from typing import Optional

import torch

from .._platform import triton_interpreting
from ..kernels.linear_softmax import linear_softmax_forward, linear_softmax_grad as _grad_kernel


@torch.library.custom_op("quietstar_fast_triton::linear_softmax_fwd", mutates_args=())
def linear_softmax_fwd(hidden: torch.Tensor, weight: torch.Tensor, targets: Optional[torch.Tensor],
                       noise: Optional[torch.Tensor], seed: Optional[torch.Tensor], banned: Optional[torch.Tensor],
                       inv_t: float, sample_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lse, picked logit, sampled tokens or an empty tensor in cross-entropy mode); see the launcher."""
    lse, picked, tokens = linear_softmax_forward(
        hidden.contiguous(), weight.contiguous(), targets=None if targets is None else targets.long().contiguous(),
        noise=noise, seed=seed, banned=banned, inv_t=inv_t, sample_scale=sample_scale,
        interpret=triton_interpreting())
    return lse, picked, tokens if tokens is not None else hidden.new_empty(0, dtype=torch.int64)


@linear_softmax_fwd.register_fake
def _(hidden, weight, targets, noise, seed, banned, inv_t, sample_scale):
    rows = hidden.shape[0]
    tokens = hidden.new_empty((0,) if targets is not None else (rows,), dtype=torch.int64)
    return hidden.new_empty(rows, dtype=torch.float32), hidden.new_empty(rows, dtype=torch.float32), tokens


@torch.library.custom_op("quietstar_fast_triton::linear_softmax_grad", mutates_args=())
def linear_softmax_grad(hidden: torch.Tensor, weight: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor,
                        coef: torch.Tensor, banned: Optional[torch.Tensor], inv_t: float) -> torch.Tensor:
    """d loss / d logits of a chunk of rows, (C, V) in hidden's dtype."""
    return _grad_kernel(hidden.contiguous(), weight.contiguous(), lse.float().contiguous(), targets.long().contiguous(),
                        coef.float().contiguous(), banned, inv_t, triton_interpreting())


@linear_softmax_grad.register_fake
def _(hidden, weight, lse, targets, coef, banned, inv_t):
    return hidden.new_empty(hidden.shape[0], weight.shape[0])
