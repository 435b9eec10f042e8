"""Tile configurations of the Triton kernels: attention per head-dim block, LM-head losses per dtype.

One place lists every configuration the GPU path can launch, so the ahead-of-time compile test covers exactly those.
Under Triton's CPU interpreter small tiles are used instead: they exercise the multi-tile paths on tiny shapes.
These are first choices from the tile sizes FlashAttention-2 / the Triton tutorial use on Hopper; retune with the
GPU benchmark when a GPU run is available.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

HEAD_DIM_BLOCKS = (16, 32, 64, 128, 256)
MAX_HEAD_DIM = HEAD_DIM_BLOCKS[-1]
# Largest dynamic shared memory per block on sm_90 (H100/H200), in bytes; launches above it fail.
SM90_MAX_SHARED_BYTES = 232448
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class TileConfig:
    block_m: int  # query rows per tile
    block_n: int  # prefix keys per tile (0 where the kernel has no key tiles)
    num_warps: int
    num_stages: int


_INTERPRETER = TileConfig(block_m=32, block_n=16, num_warps=4, num_stages=1)

# kernel name -> head-dim block -> config
_GPU_CONFIGS: dict[str, dict[int, TileConfig]] = {
    "fwd": {
        16: TileConfig(64, 64, 4, 3),
        32: TileConfig(64, 64, 4, 3),
        64: TileConfig(64, 64, 4, 3),
        128: TileConfig(128, 64, 8, 3),
        256: TileConfig(64, 32, 8, 2),
    },
    "bwd_dq": {
        16: TileConfig(64, 64, 4, 3),
        32: TileConfig(64, 64, 4, 3),
        64: TileConfig(64, 64, 4, 3),
        128: TileConfig(64, 64, 8, 2),
        256: TileConfig(32, 32, 8, 1),
    },
    "bwd_prefix_dkdv": {
        16: TileConfig(32, 128, 4, 3),
        32: TileConfig(32, 128, 4, 3),
        64: TileConfig(32, 128, 4, 3),
        128: TileConfig(32, 64, 8, 2),
        256: TileConfig(32, 32, 8, 1),
    },
    "bwd_stream_dkdv": {d: TileConfig(64 if d <= 128 else 32, 0, 4, 1) for d in HEAD_DIM_BLOCKS},
    "bwd_preprocess": {d: TileConfig(64 if d <= 128 else 32, 0, 4, 1) for d in HEAD_DIM_BLOCKS},
}
KERNEL_NAMES = tuple(_GPU_CONFIGS)


def dtype_constants(dtype: torch.dtype, interpret: bool) -> dict:
    """Constexprs every kernel takes from the input dtype."""
    return dict(
        # Triton's CPU interpreter computes bf16 arithmetic on raw bits: upcast right after loading there.
        UPCAST=interpret and dtype == torch.bfloat16,
        # fp32 inputs ask for fp32 results: no silent TF32 on the GPU.
        DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
    )


def head_dim_block(head_dim: int) -> int:
    for block in HEAD_DIM_BLOCKS:
        if head_dim <= block:
            return block
    raise ValueError(f"head_dim {head_dim} exceeds the Triton kernels' maximum of {MAX_HEAD_DIM}")


def tile_config(kernel: str, block_d: int, dtype: torch.dtype, interpret: bool) -> TileConfig:
    if interpret:
        return _INTERPRETER
    config = _GPU_CONFIGS[kernel][block_d]
    if dtype == torch.float32:
        # fp32 dots run in exact fp32 on CUDA cores (no tensor cores), and fp32 tiles take twice the registers and
        # shared memory: small tiles avoid massive register spills and stay within sm_90's 227 KB.
        config = TileConfig(min(config.block_m, 32), min(config.block_n, 32), config.num_warps, 1)
    return config


@dataclass(frozen=True)
class LinearSoftmaxConfig:
    block_m: int  # rows per program
    block_v: int  # vocabulary ids per tile
    block_k: int  # hidden units per dot
    num_warps: int
    num_stages: int


_LINEAR_SOFTMAX_INTERPRETER = {
    "lm_fwd": LinearSoftmaxConfig(block_m=16, block_v=256, block_k=32, num_warps=4, num_stages=1),
    "lm_grad": LinearSoftmaxConfig(block_m=16, block_v=256, block_k=32, num_warps=4, num_stages=1),
}
_LINEAR_SOFTMAX_GPU = {
    "lm_fwd": LinearSoftmaxConfig(block_m=128, block_v=128, block_k=64, num_warps=8, num_stages=3),
    "lm_grad": LinearSoftmaxConfig(block_m=128, block_v=128, block_k=64, num_warps=8, num_stages=3),
}


def linear_softmax_config(kernel: str, dtype: torch.dtype, interpret: bool) -> LinearSoftmaxConfig:
    if interpret:
        return _LINEAR_SOFTMAX_INTERPRETER[kernel]
    config = _LINEAR_SOFTMAX_GPU[kernel]
    if dtype == torch.float32:
        # Exact fp32 dots run on CUDA cores; smaller tiles avoid register spills (see tile_config).
        config = LinearSoftmaxConfig(64, 64, 32, 4, 1)
    return config
