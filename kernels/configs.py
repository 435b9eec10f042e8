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
        # 16 rows on 4 warps: 32x32 on 8 warps put 8 mma.sync warps along a 32-column tile (each column twice)
        256: TileConfig(16, 32, 4, 1),
    },
    "bwd_prefix_dkdv": {
        # 8 warps: on 4 warps ptxas spilled 168-208 B per thread at d <= 64 (kernels/aot.py's evidence)
        16: TileConfig(32, 128, 8, 3),
        32: TileConfig(32, 128, 8, 3),
        64: TileConfig(32, 128, 8, 3),
        128: TileConfig(32, 64, 8, 2),
        256: TileConfig(32, 16, 4, 1),  # as bwd_dq: 32x32 on 8 warps repeated MMA work
    },
    # 8 warps from d = 128 on: on 4 warps the register-resident dK/dV rows spilled 464-472 B per thread
    "bwd_stream_dkdv": {d: TileConfig(64 if d <= 128 else 32, 0, 4 if d <= 64 else 8, 1) for d in HEAD_DIM_BLOCKS},
    "bwd_preprocess": {d: TileConfig(64 if d <= 128 else 32, 0, 4, 1) for d in HEAD_DIM_BLOCKS},
}
KERNEL_NAMES = tuple(_GPU_CONFIGS)

# fp32 inputs ask for exact fp32 dots: they run on CUDA cores (no tensor cores), each thread holding far more of a
# tile than an MMA fragment, so the tiles shrink as d grows; chosen as the largest spill-free tiles on sm_90 where
# one exists (the exceptions are listed, with their measured spills, in kernels/aot.py).
_GPU_FP32_CONFIGS: dict[str, dict[int, TileConfig]] = {
    "fwd": {16: TileConfig(32, 32, 4, 1), 32: TileConfig(32, 32, 4, 1), 64: TileConfig(32, 32, 8, 1),
            128: TileConfig(16, 16, 8, 1), 256: TileConfig(16, 16, 8, 1)},
    "bwd_dq": {16: TileConfig(32, 32, 4, 1), 32: TileConfig(32, 32, 4, 1), 64: TileConfig(32, 32, 8, 1),
               128: TileConfig(16, 32, 8, 1), 256: TileConfig(16, 16, 8, 1)},
    "bwd_prefix_dkdv": {16: TileConfig(32, 32, 4, 1), 32: TileConfig(32, 32, 4, 1), 64: TileConfig(32, 32, 8, 1),
                        128: TileConfig(32, 32, 8, 1), 256: TileConfig(16, 16, 8, 1)},
    "bwd_stream_dkdv": {16: TileConfig(32, 0, 4, 1), 32: TileConfig(32, 0, 4, 1), 64: TileConfig(32, 0, 8, 1),
                        128: TileConfig(32, 0, 4, 1), 256: TileConfig(16, 0, 8, 1)},
    "bwd_preprocess": {d: TileConfig(32, 0, 4, 1) for d in HEAD_DIM_BLOCKS},
}


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
    return (_GPU_FP32_CONFIGS if dtype == torch.float32 else _GPU_CONFIGS)[kernel][block_d]


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
    # 64 vocabulary ids per tile: at 128 the sampling variants (noise per logit) spilled up to 1.9 KB per thread
    "lm_fwd": LinearSoftmaxConfig(block_m=128, block_v=64, block_k=64, num_warps=8, num_stages=3),
    "lm_grad": LinearSoftmaxConfig(block_m=128, block_v=128, block_k=64, num_warps=8, num_stages=3),
}
_LINEAR_SOFTMAX_FP32 = {
    # Exact fp32 dots on CUDA cores; 32 rows for the forward: at 64 its sampling variants spilled 8-120 B
    "lm_fwd": LinearSoftmaxConfig(32, 64, 32, 4, 1),
    "lm_grad": LinearSoftmaxConfig(64, 64, 32, 4, 1),
}


def linear_softmax_config(kernel: str, dtype: torch.dtype, interpret: bool) -> LinearSoftmaxConfig:
    if interpret:
        return _LINEAR_SOFTMAX_INTERPRETER[kernel]
    return (_LINEAR_SOFTMAX_FP32 if dtype == torch.float32 else _LINEAR_SOFTMAX_GPU)[kernel]
