"""Build script: the Triton kernels in ``kernels/`` ship as ``quietstar_fast.kernels``; the CUDA kernels in ``csrc/``
build as the optional extension ``quietstar_fast._C``.

``kernels/`` has no ``__init__.py``: the import name ``kernels`` belongs to HuggingFace's hub-kernels package (which
transformers >= 5.25 imports), and a regular package in the repository root would shadow it for anyone working
there. The package mapping below installs the folder as ``quietstar_fast.kernels``; in the source tree the link
``quietstar_fast/kernels -> ../kernels`` gives the same import path (an editable install cannot map a subpackage of
a regular package to another folder).

The extension is built when torch is a CUDA build and nvcc is found. ``QUIETSTAR_BUILD_CUDA=1`` forces it (and
fails loudly if it cannot be built), ``QUIETSTAR_BUILD_CUDA=0`` skips it. Without it the package works and
``impl="cuda"`` explains how to build it. Architectures: ``TORCH_CUDA_ARCH_LIST``; when unset and no GPU is visible,
``8.0+PTX;9.0a`` (A100-class SASS, PTX for newer GPUs, and H100 SASS).
Install with ``pip install --no-build-isolation -e .`` so the build uses the torch already installed.
"""
import importlib.util
import os
from pathlib import Path

from setuptools import setup

PACKAGES = [
    "quietstar_fast",
    "quietstar_fast.attention",
    "quietstar_fast.loss",
    "quietstar_fast.quietstar",
    "quietstar_fast.kernels",
]
DEFAULT_ARCH_LIST = "8.0+PTX;9.0a"
ROOT = Path(__file__).resolve().parent


def _find_cuda_toolkit():
    """quietstar_fast/cuda_toolkit.py, loaded by path: the package is not importable while it is being built."""
    spec = importlib.util.spec_from_file_location("cuda_toolkit", ROOT / "quietstar_fast" / "cuda_toolkit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.find_cuda_toolkit()


def _library_include_flags() -> list[str]:
    """Headers of the CUDA libraries that pip-installed CUDA torch carries (cuBLAS, cuSPARSE, ...), for a toolkit
    without them. ``-isystem`` puts them after the toolkit's own ``-I`` directories: they also carry runtime
    headers that must not shadow the toolkit's."""
    try:
        import nvidia
    except ImportError:
        return []
    flags = []
    for base in map(Path, nvidia.__path__):
        for include in sorted(base.glob("*/include")):
            if (include / "cublas_v2.h").exists():
                flags += ["-isystem", str(include)]
    return flags


def cuda_extensions(build_choice: str) -> list:
    if build_choice == "0":
        return []
    forced = build_choice == "1"
    toolkit = _find_cuda_toolkit()
    if toolkit is not None and "CUDA_HOME" not in os.environ:
        os.environ["CUDA_HOME"] = str(toolkit)  # torch reads it when cpp_extension is imported
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if forced:
            raise
        return []
    if torch.version.cuda is None or cpp_extension.CUDA_HOME is None:
        if forced:
            raise RuntimeError("QUIETSTAR_BUILD_CUDA=1 needs a CUDA build of torch and the CUDA toolkit (nvcc); got "
                               f"torch {torch.__version__}, CUDA_HOME={cpp_extension.CUDA_HOME}")
        return []
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    library_flags = _library_include_flags()
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.c[pu]*") if p.suffix in (".cpp", ".cu"))
    return [
        cpp_extension.CUDAExtension(
            name="quietstar_fast._C",
            sources=sources,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args={
                "cxx": ["-O3", *library_flags],
                "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr", *library_flags],
            },
        )
    ]


def main() -> None:
    extensions = cuda_extensions(os.environ.get("QUIETSTAR_BUILD_CUDA", "auto"))
    cmdclass = {}
    if extensions:
        from torch.utils.cpp_extension import BuildExtension

        cmdclass["build_ext"] = BuildExtension
    setup(
        packages=PACKAGES,
        package_dir={"quietstar_fast.kernels": "kernels"},
        ext_modules=extensions,
        cmdclass=cmdclass,
    )


main()
