"""Triton kernels (``@triton.jit`` code and their launchers). Import through ``quietstar_fast.kernels``."""
