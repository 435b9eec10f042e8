"""Test setup: Triton runs in its CPU interpreter when there is no GPU.

TRITON_INTERPRET must be set before any kernel module is imported (the @triton.jit decorators read it).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Kernel outputs start as NaN (kernels/outputs.py; the emulated CUDA ops do the same), so an element a kernel never
# writes fails a test instead of passing as a zero.
os.environ.setdefault("QUIETSTAR_POISON_OUTPUTS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def impl_for(monkeypatch):
    """Maps a backend id of ``backends.every_backend`` to the impl string, switching the CPU emulation of the CUDA
    kernels on for "cuda-emulated"."""
    def select(backend: str) -> str:
        if backend == "cuda-emulated":
            from emulated_cuda import use_emulated_cuda_kernels

            use_emulated_cuda_kernels(monkeypatch)
            return "cuda"
        return backend
    return select


def pytest_terminal_summary(terminalreporter):
    """Prints how many cases each property-based test ran (tests/test_fuzz.py)."""
    fuzz = __import__("sys").modules.get("test_fuzz")
    if fuzz is not None and fuzz.CASE_COUNTS:
        terminalreporter.section("property-based cases per op and backend")
        for name, count in sorted(fuzz.CASE_COUNTS.items()):
            terminalreporter.write_line(f"{name}: {count}")
