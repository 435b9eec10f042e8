"""Where Triton kernels can run: a CUDA device, or Triton's CPU interpreter (TRITON_INTERPRET=1)."""
from __future__ import annotations

import importlib.util
import os

import torch


def triton_interpreting() -> bool:
    """True when Triton's interpreter is on; it must be set before any kernel module is imported."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_can_run_on(device: torch.device) -> bool:
    if not triton_installed():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreting())
