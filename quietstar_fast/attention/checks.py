"""Argument checks for ``thought_attention``: every error names the argument and what is wrong with it."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..mask import ThoughtMaskLayout

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class AttentionCall:
    """A validated call: the mask layout plus the sizes and scale every backend needs."""

    layout: ThoughtMaskLayout
    batch: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    softmax_scale: float

    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads


def _check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (batch, heads, tokens, head_dim), got shape {tuple(x.shape)}")
    return x


def check_attention_call(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prefix_len: int,
    key_padding_mask: torch.Tensor | None,
    sliding_window: int | None,
    softmax_scale: float | None,
) -> AttentionCall:
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, x)
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q has dtype {q.dtype}; supported: float16, bfloat16, float32, float64")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but q has {q.dtype}; q, k and v must share one dtype")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; q, k and v must be on one device")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    batch, num_q_heads, q_len, head_dim = q.shape
    _, num_kv_heads, k_len, k_head_dim = k.shape
    if k.shape[0] != batch:
        raise ValueError(f"k has batch size {k.shape[0]} but q has {batch}")
    if k_head_dim != head_dim:
        raise ValueError(f"k has head_dim {k_head_dim} but q has {head_dim}")
    if head_dim < 1:
        raise ValueError("head_dim must be at least 1")
    if num_kv_heads < 1 or num_q_heads % num_kv_heads != 0:
        raise ValueError(f"q heads ({num_q_heads}) must be a multiple of k/v heads ({num_kv_heads}) for GQA")
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 1:
        raise ValueError(f"prefix_len must be a positive int, got {prefix_len!r}")
    if k_len % prefix_len != 0:
        raise ValueError(f"k has {k_len} keys, not a multiple of prefix_len={prefix_len} ([prefix | stream steps])")
    if q_len == 0 or q_len % prefix_len != 0:
        raise ValueError(f"q has {q_len} queries, not a positive multiple of prefix_len={prefix_len}")
    if q_len > k_len:
        raise ValueError(f"q has {q_len} queries but k only {k_len} keys; q holds the last m of the k's steps")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError(f"key_padding_mask must be a torch.Tensor or None, got {type(key_padding_mask).__name__}")
        if tuple(key_padding_mask.shape) != (batch, prefix_len):
            raise ValueError(
                f"key_padding_mask must have shape (batch, prefix_len) = {(batch, prefix_len)}, "
                f"got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.dtype.is_floating_point or key_padding_mask.dtype.is_complex:
            raise TypeError(f"key_padding_mask must be bool or integer (1 = real token), got {key_padding_mask.dtype}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")
        key_padding_mask = key_padding_mask.to(torch.bool)
    if sliding_window is not None and (
        isinstance(sliding_window, bool) or not isinstance(sliding_window, int) or sliding_window < 1
    ):
        raise ValueError(f"sliding_window must be a positive int or None, got {sliding_window!r}")
    if sliding_window is not None and sliding_window >= prefix_len:
        sliding_window = None  # a window as long as the prefix masks nothing
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    elif not isinstance(softmax_scale, (int, float)) or not math.isfinite(softmax_scale) or softmax_scale <= 0:
        raise ValueError(f"softmax_scale must be a positive finite number, got {softmax_scale!r}")
    layout = ThoughtMaskLayout(
        prefix_len=prefix_len,
        num_stream_steps=k_len // prefix_len - 1,
        num_query_steps=q_len // prefix_len,
        key_padding_mask=key_padding_mask,
        sliding_window=sliding_window,
    )
    return AttentionCall(layout, batch, num_q_heads, num_kv_heads, head_dim, float(softmax_scale))


def unit_stride_last(x: torch.Tensor) -> torch.Tensor:
    """The kernels take any batch/head/token strides but need the head dim contiguous."""
    return x if x.stride(-1) == 1 else x.contiguous()
