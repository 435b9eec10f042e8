"""Public thought-aware attention: one function, several backends."""
from __future__ import annotations

import torch

from .._platform import resolve_impl
from .checks import check_attention_call
from .reference import reference_thought_attention
from .torch_impl import torch_thought_attention

def thought_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    prefix_len: int,
    key_padding_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softmax_scale: float | None = None,
    return_lse: bool = False,
    impl: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention under Quiet-STaR's parallel-thought mask (``quietstar_fast.mask``), without building it.

    Args:
        q: (B, Hq, m*n, d) queries of the last m thought steps ``a+1-m .. a`` (step 0 = the real tokens), step-major.
        k, v: (B, Hkv, (a+1)*n, d) in the official KV-cache layout ``[prefix n | stream step 1 n | ... | step a n]``.
        prefix_len: n, the number of real tokens.
        key_padding_mask: (B, n) bool or 0/1 integers, True = real token (the HF ``attention_mask``).
        sliding_window: W; prefix key j is visible to position i only if ``i - j < W``. None = no window.
        softmax_scale: defaults to 1/sqrt(d).
        return_lse: also return the log-sum-exp (B, Hq, m*n) in fp32 (fp64 for fp64 inputs); it is differentiable.
        impl: "triton" (kernels; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1), "cuda" (the CUDA C++
            kernels of the optional extension ``quietstar_fast._C``; head_dim <= 128), "sdpa" (PyTorch's fused
            attention kernels for the causal prefix, merged exactly with the own-stream part; what they cannot take
            goes to triton on CUDA, torch elsewhere: docs/api.md), "torch" (chunked PyTorch, memory-efficient),
            "reference" (dense mask, as the official code), or "auto" (triton for CUDA tensors; on CPU sdpa in
            fp32 and bf16 and, from n = 256, in fp16, else torch: measured in
            benchmarks/results/attention_cpu_cpu-auto.csv).

    Returns:
        o (B, Hq, m*n, d) in q's dtype, and lse if ``return_lse``. A query with no visible key (every key up to it
        padded) gets o = 0 and lse = -inf.
    """
    call = check_attention_call(q, k, v, prefix_len, key_padding_mask, sliding_window, softmax_scale)
    impl = resolve_impl(impl, q, attention=True, prefix_len=prefix_len)
    if impl == "sdpa":
        from .sdpa_impl import sdpa_fallback, sdpa_thought_attention

        impl = sdpa_fallback(call, q.device, q.dtype) or impl
    if impl == "sdpa":
        out, lse = sdpa_thought_attention(q, k, v, call, need_lse=return_lse)
    elif impl == "triton":
        from .triton_impl import triton_thought_attention

        out, lse = triton_thought_attention(q, k, v, call)
    elif impl == "cuda":
        from .cuda_impl import cuda_thought_attention

        out, lse = cuda_thought_attention(q, k, v, call)
    elif impl == "torch":
        out, lse = torch_thought_attention(q, k, v, call)
    else:
        out, lse = reference_thought_attention(q, k, v, call.layout, call.softmax_scale)
    return (out, lse) if return_lse else out
