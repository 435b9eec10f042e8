"""Launchers of the thought-attention kernels: allocate outputs, pick tiles, size grids."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import triton

from .configs import HEAD_DIM_BLOCKS, KERNEL_DTYPES, TileConfig, dtype_constants, head_dim_block, tile_config
from .jit_utils import constexpr_names
from .outputs import output_buffer
from .thought_attention_bwd import (
    thought_attention_bwd_dq_kernel,
    thought_attention_bwd_prefix_dkdv_kernel,
    thought_attention_bwd_preprocess_kernel,
    thought_attention_bwd_stream_dkdv_kernel,
)
from .thought_attention_fwd import thought_attention_fwd_kernel


@dataclass(frozen=True)
class ThoughtAttentionShape:
    """Sizes of a call: q (B, Hq, m*n, d); k/v (B, Hkv, (a+1)*n, d); queries are steps first_query_step..a."""

    batch: int
    num_q_heads: int
    num_kv_heads: int
    prefix_len: int
    num_stream_steps: int
    num_query_steps: int
    head_dim: int
    sliding_window: int | None
    softmax_scale: float
    interpret: bool

    @property
    def first_query_step(self) -> int:
        return self.num_stream_steps + 1 - self.num_query_steps

    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads


KERNELS = {
    "fwd": thought_attention_fwd_kernel,
    "bwd_preprocess": thought_attention_bwd_preprocess_kernel,
    "bwd_dq": thought_attention_bwd_dq_kernel,
    "bwd_prefix_dkdv": thought_attention_bwd_prefix_dkdv_kernel,
    "bwd_stream_dkdv": thought_attention_bwd_stream_dkdv_kernel,
}


def launchable_variants():
    """Yield (kernel name, kernel, dtype, constexprs, config) for every variant the GPU path can launch."""
    for name, dtype, block_d in itertools.product(KERNELS, KERNEL_DTYPES, HEAD_DIM_BLOCKS):
        seen = set()
        for has_padding, has_window, has_dlse in itertools.product((False, True), repeat=3):
            consts, cfg = kernel_constants(
                name, dtype, block_d, has_padding=has_padding, has_window=has_window, has_dlse=has_dlse
            )
            key = tuple(sorted(consts.items()))
            if key not in seen:
                seen.add(key)
                yield name, KERNELS[name], dtype, consts, cfg


def kernel_constants(
    name: str,
    dtype: torch.dtype,
    head_dim: int,
    *,
    has_padding: bool,
    has_window: bool,
    has_dlse: bool = False,
    interpret: bool = False,
) -> tuple[dict, TileConfig]:
    """The constexpr arguments and tile config of kernel ``name``: shared by the launchers and the AOT check."""
    block_d = head_dim_block(head_dim)
    cfg = tile_config(name, block_d, dtype, interpret)
    values = dict(
        HAS_PADDING=has_padding,
        HAS_WINDOW=has_window,
        HAS_DLSE=has_dlse,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=block_d,
        **dtype_constants(dtype, interpret),
    )
    accepted = constexpr_names(KERNELS[name])
    return {key: value for key, value in values.items() if key in accepted}, cfg


def _valid_args(valid: torch.Tensor | None, like: torch.Tensor):
    if valid is None:
        return like.new_zeros(1, dtype=torch.int8), 0
    return valid, valid.stride(0)


def _strides(x: torch.Tensor):
    if x.stride(-1) != 1:
        raise ValueError("kernel operands must be contiguous in the head dimension")
    return x.stride(0), x.stride(1), x.stride(2)


def thought_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, shape: ThoughtAttentionShape
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns o (like q, contiguous) and lse (B, Hq, m*n) fp32. ``valid``: (B, n) int8 or None (no padding)."""
    n, m = shape.prefix_len, shape.num_query_steps
    o = output_buffer(*q.shape, dtype=q.dtype, device=q.device)
    lse = output_buffer(shape.batch, shape.num_q_heads, m * n, dtype=torch.float32, device=q.device)
    consts, cfg = kernel_constants(
        "fwd", q.dtype, shape.head_dim, has_padding=valid is not None, has_window=shape.sliding_window is not None,
        interpret=shape.interpret,
    )
    valid_t, stride_valid = _valid_args(valid, q)
    grid = (triton.cdiv(n, cfg.block_m) * shape.batch * shape.num_q_heads, m)
    thought_attention_fwd_kernel[grid](
        q, k, v, o, lse, valid_t,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o), stride_valid,
        shape.num_q_heads, shape.group_size, n, m, shape.first_query_step, shape.head_dim,
        shape.sliding_window or 0, shape.softmax_scale,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts,
    )
    return o, lse


def thought_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    grad_o: torch.Tensor,
    grad_lse: torch.Tensor | None,
    valid: torch.Tensor | None,
    shape: ThoughtAttentionShape,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv), contiguous, in the inputs' dtype. ``grad_lse`` may be None (LSE unused)."""
    n, m, a = shape.prefix_len, shape.num_query_steps, shape.num_stream_steps
    b, hq, hkv = shape.batch, shape.num_q_heads, shape.num_kv_heads
    valid_t, stride_valid = _valid_args(valid, q)
    window = shape.sliding_window or 0

    def constants(name: str, has_dlse: bool = False):
        return kernel_constants(
            name, q.dtype, shape.head_dim, has_padding=valid is not None, has_window=shape.sliding_window is not None,
            has_dlse=has_dlse, interpret=shape.interpret,
        )

    delta = output_buffer(*lse.shape, dtype=lse.dtype, device=lse.device)
    consts, cfg = constants("bwd_preprocess", has_dlse=grad_lse is not None)
    thought_attention_bwd_preprocess_kernel[(triton.cdiv(m * n, cfg.block_m) * b * hq,)](
        o, grad_o, grad_lse if grad_lse is not None else lse, delta,
        *_strides(o), *_strides(grad_o), hq, m * n, shape.head_dim,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts,
    )

    dq = output_buffer(*q.shape, dtype=q.dtype, device=q.device)
    consts, cfg = constants("bwd_dq")
    thought_attention_bwd_dq_kernel[(triton.cdiv(n, cfg.block_m) * b * hq, m)](
        q, k, v, grad_o, lse, delta, dq, valid_t,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad_o), *_strides(dq), stride_valid,
        hq, shape.group_size, n, m, shape.first_query_step, shape.head_dim, window, shape.softmax_scale,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts,
    )

    # dk and dv share one contiguous layout, so the kernels take one set of strides for both.
    dk = output_buffer(*k.shape, dtype=k.dtype, device=k.device)
    dv = output_buffer(*k.shape, dtype=v.dtype, device=v.device)
    operands = (q, k, v, grad_o, lse, delta, dk, dv, valid_t)
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_o), *_strides(dk), stride_valid)
    consts, cfg = constants("bwd_prefix_dkdv")
    thought_attention_bwd_prefix_dkdv_kernel[(triton.cdiv(n, cfg.block_n) * b * hkv,)](
        *operands, *strides, hkv, shape.group_size, n, m, shape.head_dim, window, shape.softmax_scale,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts,
    )
    if a > 0:
        consts, cfg = constants("bwd_stream_dkdv")
        thought_attention_bwd_stream_dkdv_kernel[(triton.cdiv(n, cfg.block_m) * b * hkv, a)](
            *operands, *strides, hkv, shape.group_size, n, m, shape.first_query_step, shape.head_dim,
            shape.softmax_scale, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts,
        )
    return dq, dk, dv
