"""Ahead-of-time compilation of every launchable kernel configuration for a GPU target, without a GPU.

The CPU interpreter accepts code the GPU compiler rejects (e.g. ``tl.dot`` with K < 16); compiling each
(kernel, dtype, tile config, specialisation) for sm_90 catches that on CPU-only CI, and so does checking that
each variant's shared memory fits the H100's per-block limit (otherwise only the launch would fail).
Run in a process where TRITON_INTERPRET is unset: ``python -m quietstar_fast.kernels.aot --arch 90``.
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

from . import linear_softmax, thought_attention
from .configs import SM90_MAX_SHARED_BYTES
from .jit_utils import constexpr_names

_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
# Pointer arguments with a fixed element type; every other upper-case pointer takes the data dtype.
_POINTER_TYPES = {
    "LSE": "*fp32", "DELTA": "*fp32", "DLSE": "*fp32", "COEF": "*fp32", "NOISE": "*fp32",
    "PART_MAX": "*fp32", "PART_SUM": "*fp32", "PART_PICK": "*fp32", "PART_BEST": "*fp32", "PART_INDEX": "*i32",
    "VALID": "*i8", "BANNED": "*i8", "TARGETS": "*i64", "SEED": "*i64",
}
_FLOAT_SCALARS = {"sm_scale", "inv_t", "sample_scale"}


def _signature(kernel, dtype: torch.dtype) -> dict[str, str]:
    constexprs = constexpr_names(kernel)
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in _POINTER_TYPES:
            signature[name] = _POINTER_TYPES[name]
        elif name.isupper():
            signature[name] = "*" + _TRITON_DTYPE[dtype]
        elif name in _FLOAT_SCALARS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    return signature


def launchable_configs():
    """Every (kernel name, kernel, dtype, constexprs, config) the GPU path can launch."""
    return itertools.chain(thought_attention.launchable_variants(), linear_softmax.launchable_variants())


def compile_config(kernel, dtype: torch.dtype, consts: dict, cfg, arch: int):
    source = ASTSource(fn=kernel, signature=_signature(kernel, dtype), constexprs=consts)
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for H100")
    parser.add_argument("--kernel", help="only kernels with this name")
    parser.add_argument("--shard", default="0/1", help="I/N: compile every N-th variant starting at I")
    args = parser.parse_args(argv)
    shard_index, shard_count = (int(part) for part in args.shard.split("/"))
    failures, count, start = [], 0, time.time()
    for position, (name, kernel, dtype, consts, cfg) in enumerate(launchable_configs()):
        if (args.kernel and name != args.kernel) or position % shard_count != shard_index:
            continue
        label = f"{name} {_TRITON_DTYPE[dtype]} {consts} {cfg}"
        try:
            compiled = compile_config(kernel, dtype, consts, cfg, args.arch)
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
