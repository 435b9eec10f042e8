"""Ahead-of-time compilation of every launchable kernel configuration for a GPU target, without a GPU.

The CPU interpreter accepts code the GPU compiler rejects (e.g. ``tl.dot`` with K < 16); compiling each
(kernel, dtype, head-dim block, specialisation) for sm_90 catches that on CPU-only CI, and so does checking that
each variant's shared memory fits the H100's per-block limit (otherwise only the launch would fail). Run in a process where
TRITON_INTERPRET is unset: ``python -m quietstar_fast.kernels.aot --arch 90``.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .configs import HEAD_DIM_BLOCKS, KERNEL_DTYPES, SM90_MAX_SHARED_BYTES
from .thought_attention import KERNELS, constexpr_names, kernel_constants

_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
# Pointer arguments by name: data tensors take the input dtype; statistics are fp32; padding flags int8.
_STAT_POINTERS = {"LSE", "DELTA", "DLSE"}
_FLAG_POINTERS = {"VALID"}
_FLOAT_SCALARS = {"sm_scale"}


def _signature(kernel, dtype: torch.dtype) -> dict[str, str]:
    constexprs = constexpr_names(kernel)
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in _STAT_POINTERS:
            signature[name] = "*fp32"
        elif name in _FLAG_POINTERS:
            signature[name] = "*i8"
        elif name.isupper():
            signature[name] = "*" + _TRITON_DTYPE[dtype]
        elif name in _FLOAT_SCALARS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    return signature


def launchable_configs():
    """Yield (kernel name, dtype, head-dim block, constexpr dict, tile config), each distinct variant once."""
    for name, dtype, block_d in itertools.product(KERNELS, KERNEL_DTYPES, HEAD_DIM_BLOCKS):
        seen = set()
        for has_padding, has_window, has_dlse in itertools.product((False, True), repeat=3):
            consts, cfg = kernel_constants(
                name, dtype, block_d, has_padding=has_padding, has_window=has_window, has_dlse=has_dlse
            )
            key = tuple(sorted(consts.items()))
            if key not in seen:
                seen.add(key)
                yield name, dtype, block_d, consts, cfg


def compile_config(name: str, dtype: torch.dtype, consts: dict, cfg, arch: int):
    kernel = KERNELS[name]
    source = ASTSource(fn=kernel, signature=_signature(kernel, dtype), constexprs=consts)
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for H100")
    parser.add_argument("--kernel", choices=sorted(KERNELS), help="only this kernel")
    parser.add_argument("--shard", default="0/1", help="I/N: compile every N-th variant starting at I")
    args = parser.parse_args(argv)
    shard_index, shard_count = (int(part) for part in args.shard.split("/"))
    failures, count, start = [], 0, time.time()
    for position, (name, dtype, block_d, consts, cfg) in enumerate(launchable_configs()):
        if (args.kernel and name != args.kernel) or position % shard_count != shard_index:
            continue
        label = f"{name} {_TRITON_DTYPE[dtype]} BLOCK_D={block_d} {consts}"
        try:
            compiled = compile_config(name, dtype, consts, cfg, args.arch)
            if not compiled.asm.get("cubin"):
                raise RuntimeError("no cubin produced")
            if compiled.metadata.shared > SM90_MAX_SHARED_BYTES:
                raise RuntimeError(f"needs {compiled.metadata.shared} B of shared memory (> {SM90_MAX_SHARED_BYTES})")
            count += 1
        except Exception as err:  # report every failing variant, not just the first
            failures.append(f"{label}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    print(f"compiled {count} kernel variants (shard {args.shard}) for sm_{args.arch} in {time.time() - start:.1f}s; "
          f"{len(failures)} failed")
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
