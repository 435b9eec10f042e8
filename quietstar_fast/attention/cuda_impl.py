"""Autograd wrapper of the CUDA thought-attention kernels (``csrc/``, the extension ``quietstar_fast._C``)."""
from __future__ import annotations

import torch

from ..cuda_checks import MAX_HEAD_DIM
from ..cuda_ext import ops
from .checks import AttentionCall, unit_stride_last


class _ThoughtAttentionCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_valid, prefix_len: int, window: int, scale: float):
        q, k, v = (unit_stride_last(x) for x in (q, k, v))
        out, lse = ops().thought_attention_fwd(q, k, v, key_valid, prefix_len, window, scale)
        ctx.save_for_backward(q, k, v, out, lse, key_valid)
        ctx.args = (prefix_len, window, scale)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, key_valid = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else unit_stride_last(grad_out)
        grad_lse = None if grad_lse is None else grad_lse.float().contiguous()
        dq, dk, dv = ops().thought_attention_bwd(q, k, v, out, lse, grad_out, grad_lse, key_valid, *ctx.args)
        return dq, dk, dv, None, None, None, None


def cuda_thought_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall
) -> tuple[torch.Tensor, torch.Tensor]:
    """CUDA kernels; shapes as ``thought_attention``. Returns (o, lse fp32)."""
    if call.head_dim > MAX_HEAD_DIM:
        raise ValueError(f"impl='cuda' supports head_dim <= {MAX_HEAD_DIM}, got {call.head_dim}")
    layout = call.layout
    key_valid = None if layout.key_padding_mask is None else layout.key_padding_mask.to(torch.int8).contiguous()
    return _ThoughtAttentionCuda.apply(q, k, v, key_valid, layout.prefix_len, layout.sliding_window or 0,
                                       call.softmax_scale)
