"""Locating the CUDA toolkit: setup.py builds csrc/ against it, and the CPU emulation of the kernels
(tests/emulated_cuda.py) takes its fp16/bf16 headers."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path


def find_cuda_toolkit() -> Path | None:
    """CUDA_HOME / CUDA_PATH, else the toolkit root as nvcc itself reports it (``nvcc --dryrun``): the nvcc on PATH
    may be a wrapper script outside the toolkit, so its location says nothing."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    try:
        dry_run = subprocess.run(["nvcc", "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", dry_run.stdout + dry_run.stderr, re.MULTILINE)
    if match is None:
        return None
    root = Path(match.group(1).strip()).resolve()  # TOP is <toolkit>/bin/..
    return root if (root / "include" / "cuda_runtime.h").exists() else None
