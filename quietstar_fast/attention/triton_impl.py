"""The Triton thought-attention kernels as torch.library custom ops: opaque to torch.compile (fake kernels give it
the output shapes), with their backward registered as autograd. Namespace ``quietstar_fast_triton``.
"""
from typing import Optional

import torch

from .._platform import triton_interpreting
from ..kernels.configs import MAX_HEAD_DIM
from ..kernels.thought_attention import ThoughtAttentionShape, thought_attention_backward, thought_attention_forward
from .checks import AttentionCall, unit_stride_last


def _shape(q: torch.Tensor, k: torch.Tensor, prefix_len: int, sliding_window: int,
           softmax_scale: float) -> ThoughtAttentionShape:
    return ThoughtAttentionShape(
        batch=q.shape[0],
        num_q_heads=q.shape[1],
        num_kv_heads=k.shape[1],
        prefix_len=prefix_len,
        num_stream_steps=k.shape[2] // prefix_len - 1,
        num_query_steps=q.shape[2] // prefix_len,
        head_dim=q.shape[3],
        sliding_window=sliding_window or None,
        softmax_scale=softmax_scale,
        interpret=triton_interpreting(),
    )


@torch.library.custom_op("quietstar_fast_triton::thought_attention_fwd", mutates_args=())
def thought_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: Optional[torch.Tensor],
                          prefix_len: int, sliding_window: int, softmax_scale: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse fp32); ``key_valid`` (B, n) int8 or None, ``sliding_window`` 0 = none."""
    q, k, v = (unit_stride_last(x) for x in (q, k, v))
    return thought_attention_forward(q, k, v, key_valid, _shape(q, k, prefix_len, sliding_window, softmax_scale))


@thought_attention_fwd.register_fake
def _(q, k, v, key_valid, prefix_len, sliding_window, softmax_scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("quietstar_fast_triton::thought_attention_bwd", mutates_args=())
def thought_attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                          grad_out: torch.Tensor, grad_lse: Optional[torch.Tensor], key_valid: Optional[torch.Tensor],
                          prefix_len: int, sliding_window: int, softmax_scale: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, grad_out = (unit_stride_last(x) for x in (q, k, v, grad_out))
    grad_lse = None if grad_lse is None else grad_lse.float().contiguous()
    return thought_attention_backward(q, k, v, out, lse, grad_out, grad_lse, key_valid,
                                      _shape(q, k, prefix_len, sliding_window, softmax_scale))


@thought_attention_bwd.register_fake
def _(q, k, v, out, lse, grad_out, grad_lse, key_valid, prefix_len, sliding_window, softmax_scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_valid, prefix_len, sliding_window, softmax_scale = inputs
    ctx.save_for_backward(q, k, v, *output, key_valid)
    ctx.arguments = (prefix_len, sliding_window, softmax_scale)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, key_valid = ctx.saved_tensors
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out
    dq, dk, dv = thought_attention_bwd(q, k, v, out, lse, grad_out, grad_lse, key_valid, *ctx.arguments)
    return dq, dk, dv, None, None, None, None


thought_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def triton_thought_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton kernels; shapes as ``thought_attention``. Returns (o, lse fp32)."""
    if call.head_dim > MAX_HEAD_DIM:
        raise ValueError(f"impl='triton' supports head_dim <= {MAX_HEAD_DIM}, got {call.head_dim}")
    layout = call.layout
    key_valid = None if layout.key_padding_mask is None else layout.key_padding_mask.to(torch.int8).contiguous()
    return thought_attention_fwd(q, k, v, key_valid, layout.prefix_len, layout.sliding_window or 0,
                                 call.softmax_scale)
