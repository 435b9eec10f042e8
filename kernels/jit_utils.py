"""Introspection of @triton.jit kernels."""
import inspect

import triton.language as tl


def constexpr_names(kernel) -> set[str]:
    """Names of a kernel's ``tl.constexpr`` parameters (works for compiled and interpreted kernels)."""
    parameters = inspect.signature(kernel.fn).parameters.values()
    return {p.name for p in parameters if p.annotation is tl.constexpr}
