"""Static sm_90 evidence for every kernel, without a GPU: registers, spills, shared memory, threads and the matrix
instruction of every Triton configuration and every CUDA kernel instantiation; writes
benchmarks/results/static_sm90.csv.

Triton: every launchable configuration compiled for sm_90 with the JIT's production specialisation
(``quietstar_fast.kernels.aot``, in two processes). CUDA: each ``csrc/*.cu`` compiled with nvcc for sm_90a and
``-Xptxas -v`` (registers, stack frame, spill stores), its SASS counted with cuobjdump (HMMA/HGMMA tensor-core
instructions, LDSM ldmatrix, LDGSTS cp.async, LDL/STL local memory), its thread count from the PTX ``.maxntid``;
compiled again for sm_80 (its registers go to the notes; a spill there breaks the rules too). The
dynamic shared memory each instantiation asks for at launch comes from the kernels' own layout structs
(``scripts/shared_memory_footprint.cpp``, built as host C++ against the emulation headers); with the registers it
gives the blocks per SM on an H100 (228 KiB shared memory and 64 Ki registers per SM, 1 KiB reserved per block).

Rules for CUDA kernels: no spills or local memory (sm_90a and sm_80); every 16-bit tensor-core GEMM kernel
shows HMMA, LDSM and LDGSTS in its SASS (the stream dK/dV kernel, row-wise, LDGSTS); every tensor-core kernel fits
at least 2 blocks per SM on an H100.

    python scripts/static_sm90.py                 # writes the CSV
    python scripts/static_sm90.py --check         # also exits 1 if any kernel breaks a rule (see kernels/aot.py)
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from quietstar_fast.cuda_toolkit import find_cuda_toolkit
from quietstar_fast.kernels.aot import cuobjdump_path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["backend", "kernel", "config", "dtype", "head_dim", "registers", "spill_bytes", "shared_bytes",
           "dynamic_shared_bytes", "blocks_per_sm_h100", "threads", "mma", "notes", "violations"]
CUDA_ARCH = "90a"
SECOND_ARCH = "80"
_SASS_COUNTS = ("HGMMA", "HMMA", "LDSM", "LDGSTS", "LDL", "STL")
TENSOR_CORE_GEMMS = {"thought_attention_fwd_mma", "thought_attention_bwd_dq_mma",
                     "thought_attention_bwd_prefix_dkdv_mma", "linear_softmax_fwd", "linear_softmax_grad"}
TENSOR_CORE_ROW_WISE = {"thought_attention_bwd_stream_dkdv_mma"}
H100_SHARED_PER_SM = 228 * 1024
H100_RESERVED_PER_BLOCK = 1024
H100_REGISTERS_PER_SM = 64 * 1024
_CUDA_DTYPES = {"__nv_bfloat16": "bfloat16", "__half": "float16", "float": "float32"}


def triton_rows() -> list[dict]:
    """Every launchable Triton configuration, compiled in two processes (the interpreter must be off)."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as directory:
        paths = [Path(directory) / f"shard{i}.csv" for i in range(2)]
        procs = [subprocess.Popen([sys.executable, "-m", "quietstar_fast.kernels.aot", "--shard", f"{i}/2",
                                   "--csv", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for i, path in enumerate(paths)]
        outputs = [proc.communicate()[0] for proc in procs]
        if not all(path.exists() for path in paths):
            raise RuntimeError("the ahead-of-time compile wrote no evidence:\n" + "\n".join(outputs))
        rows = [row for path in paths for row in csv.DictReader(open(path))]
    for row in rows:
        row["config"] = f"{row.pop('config')} {row.pop('constexprs')}"
    return rows


def _nvcc() -> str:
    toolkit = find_cuda_toolkit()
    if toolkit is None:
        raise FileNotFoundError("nvcc not found: the CUDA evidence needs the CUDA toolkit")
    return str(Path(toolkit) / "bin" / "nvcc")


def _demangle(names: list[str]) -> list[str]:
    return subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                          check=True).stdout.splitlines()


def _sass_counts(object_file: Path) -> dict[str, dict[str, int]]:
    """Per mangled function: how many of each instruction in _SASS_COUNTS its SASS holds."""
    sass = subprocess.run([cuobjdump_path(), "-sass", str(object_file)], capture_output=True, text=True,
                          check=True).stdout
    counts, current = {}, None
    for line in sass.splitlines():
        header = re.match(r"\s+Function : (\S+)", line)
        if header:
            current = counts.setdefault(header.group(1), dict.fromkeys(_SASS_COUNTS, 0))
            continue
        opcode = re.match(r"\s+/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)", line)
        if current is not None and opcode and opcode.group(1) in current:
            current[opcode.group(1)] += 1
    return counts


def _compile(source: Path, arch: str, directory: str) -> tuple[str, Path]:
    """nvcc -Xptxas -v of one source for sm_<arch>: (the ptxas report, the object file)."""
    object_file = Path(directory) / f"{source.stem}.sm{arch}.o"
    report = subprocess.run(
        [_nvcc(), f"-gencode=arch=compute_{arch},code=sm_{arch}", "-O3", "-std=c++17", "--expt-relaxed-constexpr",
         "-Xptxas", "-v", "--keep", "--keep-dir", directory, "-I", str(ROOT / "csrc"), "-c", str(source), "-o",
         str(object_file)], capture_output=True, text=True, check=True).stderr
    return report, object_file


def _ptxas_functions(report: str) -> dict[str, tuple[int, int, int, int]]:
    """Per mangled function: (stack frame bytes, spill store bytes, registers, static shared bytes)."""
    found = re.findall(
        r"Function properties for (\S+)\n\s+(\d+) bytes stack frame, (\d+) bytes spill stores.*?\n"
        r"ptxas info\s+: Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?", report)
    return {name: (int(stack), int(spills), int(registers), int(smem or 0))
            for name, stack, spills, registers, smem in found}


def dynamic_shared_bytes() -> dict[tuple[str, str, int | str], int]:
    """(kernel, dtype, head_dim) -> the dynamic shared memory its launcher asks for."""
    toolkit = find_cuda_toolkit()
    with tempfile.TemporaryDirectory() as directory:
        program = Path(directory) / "footprint"
        subprocess.run([os.environ.get("CXX", "c++"), "-std=c++20", "-DQUIETSTAR_EMULATION", "-I", str(ROOT / "csrc"),
                        "-I", str(Path(toolkit) / "include"), str(ROOT / "scripts" / "shared_memory_footprint.cpp"),
                        "-o", str(program)], check=True, capture_output=True, text=True)
        lines = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout.splitlines()
    footprint = {}
    for line in lines:
        kernel, dtype, head_dim, size = line.split(",")
        footprint[(kernel, dtype, int(head_dim) if head_dim else "")] = int(size)
    return footprint


def blocks_per_sm_h100(registers: int, threads: int, shared_bytes: int) -> int:
    """Resident blocks per H100 SM allowed by registers (allocated per warp in units of 256) and shared memory."""
    registers_per_warp = -(-registers * 32 // 256) * 256
    by_registers = H100_REGISTERS_PER_SM // (registers_per_warp * (threads // 32))
    by_shared = H100_SHARED_PER_SM // (shared_bytes + H100_RESERVED_PER_BLOCK)
    return min(by_registers, by_shared, 32)


def cuda_rows() -> list[dict]:
    """Every kernel instantiation in csrc/*.cu, compiled here for sm_90a (and checked for sm_80)."""
    rows = []
    footprint = dynamic_shared_bytes()
    with tempfile.TemporaryDirectory() as directory:
        for source in sorted((ROOT / "csrc").glob("*.cu")):
            report, object_file = _compile(source, CUDA_ARCH, directory)
            second = _ptxas_functions(_compile(source, SECOND_ARCH, directory)[0])
            ptx = (Path(directory) / f"{source.stem}.ptx").read_text()
            threads = dict(re.findall(r"\.entry (\S+)\([^{]*?\.maxntid (\d+)", ptx, re.S))
            sass = _sass_counts(object_file)
            functions = _ptxas_functions(report)
            for (name, (stack, spills, registers, smem)), readable in zip(functions.items(),
                                                                          _demangle(list(functions))):
                rows.append(_cuda_row(readable, stack, spills, registers, smem, int(threads.get(name, 0)),
                                      sass.get(name, {}), second[name], footprint))
    return rows


def _cuda_row(readable: str, stack: int, spills: int, registers: int, smem: int, threads: int,
              sass: dict[str, int], second_arch: tuple[int, int, int, int],
              footprint: dict[tuple[str, str, int | str], int]) -> dict:
    kernel = re.search(r"(\w+)_kernel<", readable).group(1)
    arguments = re.search(r"_kernel<([^>]*)>", readable).group(1).split(", ")
    dtype = _CUDA_DTYPES[arguments[0]]
    head_dim = int(arguments[1]) if len(arguments) > 1 else ""
    dynamic = footprint.get((kernel, dtype, head_dim), 0)
    blocks = blocks_per_sm_h100(registers, threads, smem + dynamic)
    mma = "wgmma" if sass.get("HGMMA") else "mma" if sass.get("HMMA") else "none"
    spill_bytes = max(stack, spills)
    second_stack, second_spills, second_registers, _ = second_arch
    violations, notes = [], [" ".join(f"{op}={count}" for op, count in sass.items()),
                             f"sm_{SECOND_ARCH}: {second_registers} registers, "
                             f"{max(second_stack, second_spills)} B spills"]
    if spill_bytes or sass.get("LDL") or sass.get("STL"):
        violations.append(f"{stack} B stack frame, {spills} B spill stores per thread")
    if max(second_stack, second_spills):
        violations.append(f"spills on sm_{SECOND_ARCH}")
    tensor_cores = dtype != "float32" and (kernel in TENSOR_CORE_GEMMS or kernel in TENSOR_CORE_ROW_WISE)
    required = ("HMMA", "LDSM", "LDGSTS") if kernel in TENSOR_CORE_GEMMS else ("LDGSTS",)
    if tensor_cores:
        missing = [op for op in required if not sass.get(op)]
        if missing:
            violations.append(f"no {'/'.join(missing)} in the SASS of a tensor-core kernel")
        if blocks < 2:
            violations.append(f"{blocks} block per SM on an H100 (registers {registers}, shared {smem + dynamic} B)")
    return dict(backend="cuda", kernel=kernel, config=f"threads={threads}", dtype=dtype, head_dim=head_dim,
                registers=registers, spill_bytes=spill_bytes, shared_bytes=smem, dynamic_shared_bytes=dynamic,
                blocks_per_sm_h100=blocks, threads=threads, mma=mma, notes="; ".join(notes),
                violations="; ".join(violations))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "static_sm90.csv")
    parser.add_argument("--check", action="store_true", help="exit 1 if any kernel breaks a rule")
    args = parser.parse_args(argv)
    rows = triton_rows() + cuda_rows()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    broken = [row for row in rows if row["violations"]]
    print(f"wrote {args.out}: {len(rows)} kernels ({sum(r['backend'] == 'triton' for r in rows)} Triton "
          f"configurations, {sum(r['backend'] == 'cuda' for r in rows)} CUDA instantiations), {len(broken)} "
          "breaking a rule")
    for row in broken:
        print(f"  {row['backend']} {row['kernel']} {row['dtype']} d={row['head_dim']} {row['config']}: "
              f"{row['violations']}")
    return 1 if args.check and broken else 0


if __name__ == "__main__":
    sys.exit(main())
