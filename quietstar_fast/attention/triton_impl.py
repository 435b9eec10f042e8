"""Autograd wrapper of the Triton thought-attention kernels."""
from __future__ import annotations

import torch

from .._platform import triton_interpreting
from ..kernels.configs import MAX_HEAD_DIM
from ..kernels.thought_attention import ThoughtAttentionShape, thought_attention_backward, thought_attention_forward
from .checks import AttentionCall, unit_stride_last


class _ThoughtAttentionTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, valid, shape: ThoughtAttentionShape):
        q, k, v = (unit_stride_last(x) for x in (q, k, v))
        out, lse = thought_attention_forward(q, k, v, valid, shape)
        ctx.save_for_backward(q, k, v, out, lse, valid)
        ctx.shape = shape
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, valid = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        dq, dk, dv = thought_attention_backward(
            q, k, v, out, lse, unit_stride_last(grad_out), None if grad_lse is None else grad_lse.contiguous(),
            valid, ctx.shape,
        )
        return dq, dk, dv, None, None


def triton_thought_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton kernels; shapes as ``thought_attention``. Returns (o, lse fp32)."""
    if call.head_dim > MAX_HEAD_DIM:
        raise ValueError(f"impl='triton' supports head_dim <= {MAX_HEAD_DIM}, got {call.head_dim}")
    layout = call.layout
    shape = ThoughtAttentionShape(
        batch=call.batch,
        num_q_heads=call.num_q_heads,
        num_kv_heads=call.num_kv_heads,
        prefix_len=layout.prefix_len,
        num_stream_steps=layout.num_stream_steps,
        num_query_steps=layout.num_query_steps,
        head_dim=call.head_dim,
        sliding_window=layout.sliding_window,
        softmax_scale=call.softmax_scale,
        interpret=triton_interpreting(),
    )
    valid = None if layout.key_padding_mask is None else layout.key_padding_mask.to(torch.int8).contiguous()
    return _ThoughtAttentionTriton.apply(q, k, v, valid, shape)
