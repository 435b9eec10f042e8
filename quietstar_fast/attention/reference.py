"""Reference thought attention: the dense mask over all keys, as the official code computes it.

This is the oracle of the tests, so it favours being obviously right over being fast: it materialises the
(m*n, (a+1)*n) mask and scores, repeats K/V for GQA (as HF ``repeat_kv`` does) and takes a softmax in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._platform import statistics_dtype
from ..mask import ThoughtMaskLayout


def repeat_kv(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, Hkv, T, d) -> (B, Hkv*group_size, T, d), query head h reading kv head h // group_size (HF ``repeat_kv``)."""
    return x.repeat_interleave(group_size, dim=1) if group_size > 1 else x


def reference_thought_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: ThoughtMaskLayout,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense-mask attention. q (B, Hq, m*n, d), k/v (B, Hkv, (a+1)*n, d) -> o like q, lse (B, Hq, m*n) fp32
    (fp64 for fp64 inputs).

    Softmax statistics are taken in fp32 (fp64 for fp64 inputs), as HF eager attention does. A query row with no
    allowed key (possible only when the padding mask hides every key up to it) gets o = 0 and lse = -inf; the
    official code would average over all keys there.
    """
    group_size = q.shape[1] // k.shape[1]
    allowed = layout.dense_allowed(device=q.device)
    stat_dtype = statistics_dtype(q.dtype)
    scores = torch.matmul(q, repeat_kv(k, group_size).transpose(-1, -2)).to(stat_dtype) * softmax_scale
    has_key = allowed.any(dim=-1, keepdim=True)
    # Rows without any key get finite dummy scores so that neither value nor gradient turns NaN; zeroed below.
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~has_key, 0.0)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    probs = torch.exp(scores - lse).masked_fill(~has_key, 0.0)
    out = torch.matmul(probs.to(q.dtype), repeat_kv(v, group_size))
    lse = lse.masked_fill(~has_key, float("-inf")).squeeze(-1)
    return out, lse


def official_sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    additive_mask: torch.Tensor,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """The official code's attention call: ``repeat_kv`` copies, then SDPA with the dense additive float mask.

    Used as the "official" baseline of the benchmarks; ``additive_mask`` comes from ``official_step_mask`` (m = 1)
    or ``ThoughtMaskLayout.dense_allowed``.
    """
    group_size = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(
        q, repeat_kv(k, group_size), repeat_kv(v, group_size), attn_mask=additive_mask, scale=softmax_scale
    )
