"""Ahead-of-time compilation of every launchable kernel configuration for a GPU target, without a GPU, with the
static evidence of each compiled variant.

The CPU interpreter accepts code the GPU compiler rejects (e.g. ``tl.dot`` with K < 16); compiling each
(kernel, dtype, tile config, specialisation) for sm_90 catches that on CPU-only CI. Each variant is compiled with
the specialisation the JIT gives production tensors (16-byte aligned pointers; strides, head_dim and hidden
multiples of 16, as contiguous tensors with d, D and V multiples of 16 have), and must pass four rules that
otherwise only a GPU run would show: no register spills, shared memory within the H100/H200 per-block limit,
every 16-bit ``tl.dot`` lowered to tensor-core MMA (wgmma or mma.sync), and no warps that repeat another warp's
MMA work (more warps along a dot's rows or columns than its tile has).
Run in a process where TRITON_INTERPRET is unset: ``python -m quietstar_fast.kernels.aot --arch 90``
(``--csv PATH`` writes one row of registers, local bytes, shared bytes, threads and MMA kind per variant).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


# Integer arguments that are multiples of 16 for production tensors: the JIT marks them divisible by 16 too.
_DIVISIBLE_INTEGERS = {"head_dim", "hidden"}
_UNALIGNED_STRIDES = {"stride_valid_b"}  # the (B, n) padding mask: n is any length


# Exact-fp32 variants (fp32 inputs, CUDA-core dots) that keep a stack frame at every tile shape tried on
# 2026-11-30 with triton 3.7 and 3.6 (the GPU image's): e.g. bwd_prefix_dkdv d=64: 16-48 B at 4 or 8 warps, d=128:
# 32-104 B at 32x32, 16x32 and 32x16, all with only 64-128 registers in use, so not register pressure that smaller
# tiles relieve; bwd_dq d=64: 8-16 B on triton 3.6 only; fwd d=256: 336 B at 16x16 on 8 warps, 5 KB on 4. fp32 is
# the exact reference-grade path, not the training one; every 16-bit variant is spill-free on both versions.
# These are reported in the evidence (notes) instead of failing; any other spill fails.
KNOWN_FP32_SPILLS = {("fwd", 256), ("bwd_dq", 64), ("bwd_dq", 256), ("bwd_prefix_dkdv", 64),
                     ("bwd_prefix_dkdv", 128), ("bwd_prefix_dkdv", 256)}


# 16-bit variants whose only spill-free configurations put two warpgroups on a 64-row score tile, so that both
# compute the same S = Q K^T (and dP) while only the larger dot (dQ, dK/dV, O) is split between them. Every 4-warp
# alternative tried on 2026-11-30 spilled: bwd_dq d=128 64x64 / 64x32 (216-224 B), 128x64 on 8 warps (208 B);
# bwd_prefix_dkdv d=128 32x64 / 16x64 (32-80 B); fwd d=256 64x32 / 64x16 / 128x32 (608-688 B). Removing the
# repetition needs the kernels to hold fewer live tiles (issue 14), not another tile shape.
KNOWN_REPEATED_MMA = {("bwd_dq", 128), ("bwd_prefix_dkdv", 128), ("fwd", 256)}


def _specialisation(kernel) -> dict:
    """The ``tt.divisibility`` attributes the JIT attaches for production tensors (see the module docstring)."""
    constexprs = constexpr_names(kernel)
    attrs = {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            continue
        pointer = name in _POINTER_TYPES or name.isupper()
        stride = name.startswith("stride") and name not in _UNALIGNED_STRIDES
        if pointer or stride or name in _DIVISIBLE_INTEGERS:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return attrs


def launchable_configs():
    """Every (kernel name, kernel, dtype, constexprs, config) the GPU path can launch."""
    return itertools.chain(thought_attention.launchable_variants(), linear_softmax.launchable_variants())


def compile_config(kernel, dtype: torch.dtype, consts: dict, cfg, arch: int):
    source = ASTSource(fn=kernel, signature=_signature(kernel, dtype), constexprs=consts,
                       attrs=_specialisation(kernel))
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def cuobjdump_path() -> str:
    """The cuobjdump that Triton's NVIDIA backend ships (or the CUDA toolkit's on PATH)."""
    import triton.backends.nvidia as nvidia

    bundled = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else "cuobjdump"


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers per thread, local memory bytes per thread (spills or local arrays) and stack bytes of the one
    kernel in ``cubin``, from ``cuobjdump --dump-resource-usage``."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(cubin)
        report = subprocess.run([cuobjdump_path(), "--dump-resource-usage", path], capture_output=True, text=True,
                                check=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", report)
    if match is None:
        raise RuntimeError(f"no resource usage in cuobjdump's report: {report[:200]!r}")
    registers, stack, local = (int(group) for group in match.groups())
    return {"registers": registers, "stack_bytes": stack, "local_bytes": local}


def mma_kind(ptx: str) -> str:
    """The tensor-core instruction the dots became: wgmma (Hopper), mma (mma.sync, Ampere-style) or none."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    return "mma" if re.search(r"\bmma\.sync", ptx) else "none"


_MMA_LAYOUT = re.compile(r"^(#mma\w*) = #ttg\.nvidia_mma<\{versionMajor = (\d+), versionMinor = \d+, "
                         r"warpsPerCTA = \[(\d+), (\d+)\], instrShape = \[(\d+), (\d+)", re.M)
_DOT_RESULT = re.compile(r"(?:warp_group_dot|tt\.dot) .*-> tensor<(\d+)x(\d+)xf32, (#mma\w*)>")


def mma_warp_tiling(ttgir: str) -> list[str]:
    """The dots whose warps cover more rows or columns than the dot's output has, i.e. warps that repeat another
    warp's MMA work. A warp covers 16 rows; along N, a wgmma warpgroup covers instrShape N, an mma.sync warp 8."""
    layouts = {name: (int(version), int(wm), int(wn), int(inst_n))
               for name, version, wm, wn, _, inst_n in _MMA_LAYOUT.findall(ttgir)}
    repeated = set()
    for rows, cols, layout in _DOT_RESULT.findall(ttgir):
        version, warps_m, warps_n, inst_n = layouts[layout]
        covered_rows, covered_cols = 16 * warps_m, warps_n * (inst_n if version == 3 else 8)
        if covered_rows > int(rows) or covered_cols > int(cols):
            repeated.add(f"{rows}x{cols} dot on warps [{warps_m}, {warps_n}] covers {covered_rows}x{covered_cols}")
    return sorted(repeated)


def variant_label(cfg, consts: dict) -> tuple[str, str]:
    """(tile config, constexprs) of a variant as the evidence CSV writes them."""
    specialisation = {key: value for key, value in consts.items() if key not in ("UPCAST", "DOT_PRECISION")}
    return (" ".join(f"{field}={value}" for field, value in vars(cfg).items()),
            " ".join(f"{key}={value}" for key, value in specialisation.items()))


def evidence(name: str, dtype: torch.dtype, consts: dict, cfg, compiled) -> dict:
    """One row of static evidence for a compiled variant, and the rules it breaks (``violations``)."""
    usage = resource_usage(compiled.asm["cubin"])
    has_dot = "tt.dot" in compiled.asm["ttir"]
    mma = mma_kind(compiled.asm["ptx"]) if has_dot else "no dot"
    violations, notes = [], []
    # ptxas puts spilled registers in the stack frame (and local arrays in local memory): either is a spill here,
    # since the kernels call no functions.
    if usage["stack_bytes"] or usage["local_bytes"]:
        spill = f"{usage['stack_bytes']} B stack + {usage['local_bytes']} B local memory per thread (register spills)"
        known = dtype == torch.float32 and (name, consts.get("BLOCK_D")) in KNOWN_FP32_SPILLS
        (notes if known else violations).append(spill + (": a known exact-fp32 case" if known else ""))
    if compiled.metadata.shared > SM90_MAX_SHARED_BYTES:
        violations.append(f"needs {compiled.metadata.shared} B of shared memory (> {SM90_MAX_SHARED_BYTES})")
    if has_dot and dtype != torch.float32 and mma == "none":
        violations.append("a 16-bit tl.dot did not become tensor-core MMA")
    repeated = [f"repeated MMA work: {dot}" for dot in mma_warp_tiling(compiled.asm["ttgir"])]
    if repeated and (name, consts.get("BLOCK_D")) in KNOWN_REPEATED_MMA:
        notes += [f"{item}: a known case" for item in repeated]
    else:
        violations += repeated
    config, constexprs = variant_label(cfg, consts)
    return {
        "backend": "triton", "kernel": name, "dtype": _TRITON_DTYPE[dtype], "head_dim": consts.get("BLOCK_D", ""),
        "config": config, "constexprs": constexprs,
        "registers": usage["registers"], "spill_bytes": usage["stack_bytes"] + usage["local_bytes"],
        "shared_bytes": compiled.metadata.shared, "threads": 32 * cfg.num_warps, "mma": mma,
        "notes": "; ".join(notes), "violations": "; ".join(violations),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for H100")
    parser.add_argument("--kernel", help="only kernels with this name")
    parser.add_argument("--shard", default="0/1", help="I/N: compile every N-th variant starting at I")
    parser.add_argument("--csv", type=Path, help="write one row of static evidence per variant here")
    args = parser.parse_args(argv)
    shard_index, shard_count = (int(part) for part in args.shard.split("/"))
    failures, rows, start = [], [], time.time()
    for position, (name, kernel, dtype, consts, cfg) in enumerate(launchable_configs()):
        if (args.kernel and name != args.kernel) or position % shard_count != shard_index:
            continue
        label = f"{name} {_TRITON_DTYPE[dtype]} {consts} {cfg}"
        try:
            compiled = compile_config(kernel, dtype, consts, cfg, args.arch)
            if not compiled.asm.get("cubin"):
                raise RuntimeError("no cubin produced")
            row = evidence(name, dtype, consts, cfg, compiled)
            rows.append(row)
            if row["violations"]:
                failures.append(f"{label}: {row['violations']}")
        except Exception as err:  # report every failing variant, not just the first
            failures.append(f"{label}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["kernel"])
            writer.writeheader()
            writer.writerows(rows)
    print(f"compiled {len(rows)} kernel variants (shard {args.shard}) for sm_{args.arch} in "
          f"{time.time() - start:.1f}s; {len(failures)} failed")
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
