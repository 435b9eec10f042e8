"""PyTorch's fused attention kernels that return the row log-sum-exp, behind one small interface.

These are private aten ops (internal API). This module is the only place that calls them; ``PINNED_SCHEMAS`` holds
the arguments this code was written against, and tests/test_sdpa_backend.py fails loudly when a torch release
changes them.

* CPU: ``_scaled_dot_product_flash_attention_for_cpu`` and its backward. Any float dtype (fp64 included), any head
  dim, grouped K/V heads natively, an optional additive mask of the query's dtype.
* CUDA: ``_scaled_dot_product_flash_attention`` and its backward (FlashAttention-2). fp16/bf16, head dim a multiple
  of 8 up to 248 (the log-sum-exp gradient below widens the head dim by 8, and FlashAttention-2 stops at 256),
  grouped K/V heads natively, no mask.

Query heads may be any multiple of the K/V heads; query head ``h`` reads K/V head ``h // (Hq / Hkv)``. The CPU op
reads the head dim as contiguous without checking (torch 2.11-2.13: a transposed k gives wrong numbers, no error),
so every tensor is given a unit last stride here.
"""
from __future__ import annotations

import torch

from .._platform import statistics_dtype
from .checks import unit_stride_last

PINNED_SCHEMAS = {
    "_scaled_dot_product_flash_attention_for_cpu": (
        "Tensor query, Tensor key, Tensor value, float dropout_p=0., bool is_causal=False, *, Tensor? attn_mask=None, "
        "float? scale=None", 2),
    "_scaled_dot_product_flash_attention_for_cpu_backward": (
        "Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor out, Tensor logsumexp, float dropout_p, "
        "bool is_causal, *, Tensor? attn_mask=None, float? scale=None", 3),
    "_scaled_dot_product_flash_attention": (
        "Tensor query, Tensor key, Tensor value, float dropout_p=0., bool is_causal=False, "
        "bool return_debug_mask=False, *, float? scale=None", 9),
    "_scaled_dot_product_flash_attention_backward": (
        "Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor out, Tensor logsumexp, Tensor cum_seq_q, "
        "Tensor cum_seq_k, SymInt max_q, SymInt max_k, float dropout_p, bool is_causal, Tensor philox_seed, "
        "Tensor philox_offset, *, float? scale=None", 3),
}
CUDA_DTYPES = (torch.float16, torch.bfloat16)
CUDA_MAX_HEAD_DIM = 248
# Extra head-dim columns carrying the log-sum-exp gradient: one on CPU, eight on CUDA (its head dim must stay a
# multiple of 8).
_LSE_GRAD_COLUMNS = {"cpu": 1, "cuda": 8}


def schema_arguments(op_name: str) -> tuple[str, int]:
    """(the argument list, the number of returns) of ``torch.ops.aten.<op_name>`` in this torch."""
    schema = getattr(torch.ops.aten, op_name).default._schema
    text = str(schema)
    return text[text.index("(") + 1:text.index(") ->")], len(schema.returns)


def fused_prefix_unsupported(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the fused kernels cannot take these inputs, or None when they can."""
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"no fused attention with log-sum-exp is wired up for device type {device.type!r}"
    if dtype not in CUDA_DTYPES:
        return f"PyTorch's flash kernel on CUDA takes float16 and bfloat16, not {dtype}"
    if head_dim % 8 != 0 or head_dim > CUDA_MAX_HEAD_DIM:
        return f"PyTorch's flash kernel on CUDA is used for head dims that are multiples of 8 up to " \
               f"{CUDA_MAX_HEAD_DIM}, got {head_dim}"
    return None


def prefix_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *, causal: bool,
                   additive_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q (B, Hq, L, d) over k, v (B, Hkv, S, d); causal = top-left aligned (query i sees keys
    j <= i). ``additive_mask`` (B or 1, 1, L or 1, S) in q's dtype, CPU only, on top of ``causal``. Returns o
    (B, Hq, L, d) in q's dtype and lse (B, Hq, L) contiguous in fp32 (fp64 for fp64). Rows that the mask hides
    entirely come back with o = 0 and an undefined lse: the caller overrides it."""
    q, k, v = (unit_stride_last(x) for x in (q, k, v))
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=additive_mask, scale=scale)
    else:
        if additive_mask is not None:
            raise ValueError("the CUDA flash kernel takes no mask")
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
    return out, lse.to(statistics_dtype(q.dtype)).contiguous()


def prefix_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                    lse: torch.Tensor, scale: float, *, causal: bool, additive_mask: torch.Tensor | None = None,
                    grad_lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of ``prefix_forward`` for the given ``out`` and ``lse``, which may be those of a larger softmax
    this attention is one part of: the kernels recompute P = exp(S - lse) and take delta = rowsum(dO * out), so with
    the merged output and log-sum-exp they return this part's exact share of the gradients.

    ``grad_lse`` (B, Hq, L) adds the log-sum-exp's gradient (dS += P * grad_lse), which the kernels do not take: q,
    k and v gain zero head-dim columns (scores and dV unchanged), dO a column of ones and ``out`` one of -grad_lse,
    so delta becomes rowsum(dO * out) - grad_lse. Exact, at the cost of widened copies of the inputs.

    The gradients come back in q's dtype, except on CPU for 16-bit inputs: fp32 there (callers accumulate in fp32).
    """
    if grad_lse is not None:
        columns = _LSE_GRAD_COLUMNS[q.device.type]

        def widen(x: torch.Tensor, first: torch.Tensor | float) -> torch.Tensor:
            extra = x.new_zeros(*x.shape[:-1], columns)
            extra[..., 0] = first
            return torch.cat([x, extra], dim=-1)

        grads = prefix_backward(widen(grad_out, 1.0), widen(q, 0.0), widen(k, 0.0), widen(v, 0.0),
                                widen(out, -grad_lse.to(out.dtype)), lse, scale, causal=causal,
                                additive_mask=additive_mask)
        return tuple(g[..., :q.shape[-1]] for g in grads)
    lse = lse.to(torch.float32) if q.dtype != torch.float64 else lse
    grad_out, q, k, v, out = (unit_stride_last(x) for x in (grad_out, q, k, v, out))
    if q.device.type == "cpu":
        if q.dtype in (torch.float16, torch.bfloat16):
            # The CPU kernel sums each key's dK/dV over query rows and heads in the input dtype (2.9x the error of
            # a bf16 reference on folded query steps, issue #28): run it in fp32 and keep fp32 gradients.
            grad_out, q, k, v, out = (x.float() for x in (grad_out, q, k, v, out))
            additive_mask = None if additive_mask is None else additive_mask.float()
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out, q, k, v, out, lse, 0.0, causal, attn_mask=additive_mask, scale=scale)
    unused_rng = torch.empty(0, dtype=torch.int64, device=q.device)  # read only with dropout
    return torch.ops.aten._scaled_dot_product_flash_attention_backward(
        grad_out, q, k, v, out, lse, None, None, q.shape[2], k.shape[2], 0.0, causal, unused_rng, unused_rng,
        scale=scale)
