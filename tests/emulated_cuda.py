"""The CUDA kernels of csrc/, run on the CPU: built as host C++ against csrc/emulation/cuda_emulation.h (about a
minute, once per machine: torch caches the build), and plugged in behind ``impl="cuda"`` for CPU tensors.

This is how the CPU test suite checks the CUDA kernels' own code (indexing, masks, tiling, synchronisation,
launch geometry, the op layer) against the reference before any GPU run.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
from pathlib import Path

import torch

from quietstar_fast.cuda_checks import CheckedOps
from quietstar_fast.cuda_toolkit import find_cuda_toolkit

ROOT = Path(__file__).resolve().parents[1]


def emulation_unavailable_reason() -> str | None:
    toolkit = find_cuda_toolkit()
    if toolkit is None or not (toolkit / "include" / "cuda_fp16.h").exists():
        return "the CUDA toolkit headers (cuda_fp16.h) are not installed"
    return None


def _build_against_emulation(name: str, source: Path) -> object:
    """Builds ``source`` as host C++ with csrc/ and the emulation on the include path."""
    from torch.utils.cpp_extension import load

    # torch's build cache watches the listed sources only; the hash of csrc/ makes any kernel change rebuild.
    digest = hashlib.sha256()
    for path in sorted((ROOT / "csrc").rglob("*")):
        if path.is_file():
            digest.update(path.read_bytes())
    return load(
        name=name,
        sources=[str(source)],
        extra_include_paths=[str(ROOT / "csrc"), str(find_cuda_toolkit() / "include")],
        extra_cflags=["-DQUIETSTAR_EMULATION", "-O2", "-std=c++20",
                      f"-DQUIETSTAR_SOURCES={digest.hexdigest()[:16]}"],
        extra_ldflags=["-pthread"],
        verbose=os.environ.get("QUIETSTAR_VERBOSE_BUILD") == "1",
    )


@functools.cache
def _emulated_module():
    return _build_against_emulation("quietstar_fast_emulated", ROOT / "tests" / "emulation" / "emulated_ops.cpp")


def emulated_ops():
    """torch.ops.quietstar_fast_emulated, building the emulation first."""
    _emulated_module()
    return torch.ops.quietstar_fast_emulated


def launched_kernels() -> list[str]:
    """Names of the emulated kernels launched since the last call (which path the launchers chose)."""
    library = ctypes.CDLL(_emulated_module().__file__)
    capacity = 1 << 16
    while True:
        buffer = ctypes.create_string_buffer(capacity)
        length = library.quietstar_emulation_launches(buffer, capacity)
        if length <= capacity:
            return buffer.raw[:length].decode().split()
        capacity = length


@functools.cache
def ptx_probe():
    """The probe kernels of tests/emulation/ptx_probe.cpp (ldmatrix, mma, cp_async, a pipeline), built on first
    use."""
    return _build_against_emulation("quietstar_ptx_probe", ROOT / "tests" / "emulation" / "ptx_probe.cpp")


def use_emulated_cuda_kernels(monkeypatch) -> None:
    """Until ``monkeypatch`` undoes it, impl="cuda" runs the emulated kernels on CPU tensors through the real Python
    wrappers (public functions, autograd functions, loss backend) and the ops' Python-side argument checks."""
    import quietstar_fast.attention.api as attention_api
    import quietstar_fast.attention.cuda_impl as attention_cuda
    import quietstar_fast.cuda_ext as cuda_ext
    import quietstar_fast.loss.api as loss_api

    ops = CheckedOps(emulated_ops(), device_type="cpu")
    for module in (attention_api, loss_api):
        def resolve(impl, x, real=module.resolve_impl, **kwargs):
            return "cuda" if impl == "cuda" else real(impl, x, **kwargs)

        monkeypatch.setattr(module, "resolve_impl", resolve)
    monkeypatch.setattr(attention_cuda, "ops", lambda: ops)
    monkeypatch.setattr(cuda_ext, "ops", lambda: ops)
