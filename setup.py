"""Build script: the Triton kernels in ``kernels/`` ship as ``quietstar_fast.kernels``.

``csrc/`` (CUDA kernels, built as ``quietstar_fast._C``) is added by the CUDA issue.
"""
from setuptools import setup

setup(
    packages=[
        "quietstar_fast",
        "quietstar_fast.attention",
        "quietstar_fast.loss",
        "quietstar_fast.quietstar",
        "quietstar_fast.kernels",
    ],
    package_dir={"quietstar_fast.kernels": "kernels"},
)
