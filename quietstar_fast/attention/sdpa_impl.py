"""``impl="sdpa"``: thought attention on PyTorch's fused attention kernels (the math: ``sdpa_merge``).

Both directions are torch.library custom ops (namespace ``quietstar_fast_sdpa``): opaque to torch.compile (fake
kernels give it the shapes), with the backward registered as autograd.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .checks import AttentionCall
from .fused_prefix import fused_prefix_unsupported
from .sdpa_merge import sdpa_backward, sdpa_forward, stream_probs_shape


@torch.library.custom_op("quietstar_fast_sdpa::thought_attention_fwd", mutates_args=())
def thought_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: Optional[torch.Tensor],
                          prefix_len: int, sliding_window: int, softmax_scale: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o, lse, the stream keys' probabilities (B, Hkv, n, G*m, a) for the backward, or an empty tensor);
    ``key_valid`` (B, n) bool or None, ``sliding_window`` 0 = none. o is contiguous, as the fake kernel says (the
    CPU kernel's output follows q's strides, and HF passes q as a view)."""
    out, lse, stream_probs = sdpa_forward(q, k, v, key_valid, prefix_len, sliding_window, softmax_scale)
    return out.contiguous(), lse, stream_probs


@thought_attention_fwd.register_fake
def _(q, k, v, key_valid, prefix_len, sliding_window, softmax_scale):
    stats = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=stats),
            q.new_empty(stream_probs_shape(q, k, prefix_len), dtype=stats))


@torch.library.custom_op("quietstar_fast_sdpa::thought_attention_bwd", mutates_args=())
def thought_attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                          stream_probs: torch.Tensor, grad_out: torch.Tensor, grad_lse: Optional[torch.Tensor],
                          key_valid: Optional[torch.Tensor], prefix_len: int, sliding_window: int,
                          softmax_scale: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), contiguous as the fake kernel says."""
    grads = sdpa_backward(q, k, v, out, lse, stream_probs, grad_out, grad_lse, key_valid, prefix_len, sliding_window,
                          softmax_scale)
    return tuple(grad.contiguous() for grad in grads)


@thought_attention_bwd.register_fake
def _(q, k, v, out, lse, stream_probs, grad_out, grad_lse, key_valid, prefix_len, sliding_window, softmax_scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_valid, prefix_len, sliding_window, softmax_scale = inputs
    ctx.save_for_backward(q, k, v, *output, key_valid)
    ctx.set_materialize_grads(False)  # an unused lse then gives None, not zeros that the backward would have to test
    ctx.arguments = (prefix_len, sliding_window, softmax_scale)


def _backward(ctx, grad_out, grad_lse, _grad_stream_probs):
    q, k, v, out, lse, stream_probs, key_valid = ctx.saved_tensors
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out
    dq, dk, dv = thought_attention_bwd(q, k, v, out, lse, stream_probs, grad_out, grad_lse, key_valid,
                                       *ctx.arguments)
    return dq, dk, dv, None, None, None, None


thought_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def sdpa_fallback(call: AttentionCall, device: torch.device, dtype: torch.dtype) -> str | None:
    """The backend that takes a call the fused kernels cannot (decided from shapes and dtypes only), or None."""
    if fused_prefix_unsupported(device, dtype, call.head_dim) is None:
        return None
    return "triton" if device.type == "cuda" and dtype != torch.float64 else "torch"


def sdpa_thought_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall,
                           need_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shapes as ``thought_attention``; returns (o, lse fp32, fp64 for fp64), lse None when not ``need_lse`` and the
    call is plain causal attention (no stream keys, padding or window), which the public SDPA then computes."""
    layout = call.layout
    plain_causal = layout.num_stream_steps == 0 and layout.key_padding_mask is None and layout.sliding_window is None
    if plain_causal and not need_lse:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=call.softmax_scale,
                                              enable_gqa=call.group_size > 1), None
    out, lse, _ = thought_attention_fwd(q, k, v, layout.key_padding_mask, layout.prefix_len,
                                        layout.sliding_window or 0, call.softmax_scale)
    return out, lse
