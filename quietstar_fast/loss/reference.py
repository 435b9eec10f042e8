"""Reference LM-head losses: literally what the official code does, full (N, V) logits included.

The official code computes logits in the model dtype, takes ``F.cross_entropy`` on them for the NLLs, overwrites
the thought delimiters' logits with -1e10 before sampling, draws Gumbel noise ``-log(Exp(1))`` of shape (N, V),
takes the hard argmax of (z + g) and the policy log-prob ``log_softmax(z / 3)`` at the sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._platform import statistics_dtype

BANNED_LOGIT = -1e10


def banned_logit(dtype: torch.dtype) -> float:
    """-1e10 as the official code writes it, clamped to fp16's range (the official code runs in bf16/fp32)."""
    return max(BANNED_LOGIT, torch.finfo(dtype).min)


def reference_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token CE (N,) fp32 and lse (N,) fp32 of z = hidden @ weight^T (fp64 for fp64 inputs)."""
    logits = hidden @ weight.T
    loss = F.cross_entropy(logits, targets.long(), reduction="none", ignore_index=ignore_index)
    stat_dtype = statistics_dtype(logits.dtype)
    return loss.to(stat_dtype), torch.logsumexp(logits.to(stat_dtype), dim=-1)


def reference_sample(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
    banned: torch.Tensor | None,
    policy_temperature: float,
    sample_temperature: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (N,) int64, logprob (N,), lse (N,)): the Gumbel-max sample of z and log_softmax(z / policy_t) there.

    ``sample_temperature=None`` samples at temperature 1 (argmax of z + g), which is what the official code's hard
    Gumbel-softmax does whatever its tau; a number samples from softmax(z / sample_temperature).
    """
    logits = hidden @ weight.T
    if banned is not None:
        logits = logits.masked_fill(banned.bool(), banned_logit(logits.dtype))
    if noise is None:
        noise = -torch.empty_like(logits).exponential_(generator=generator).log()
    scaled = logits if sample_temperature is None else logits / sample_temperature
    tokens = (scaled + noise.to(logits.dtype)).argmax(dim=-1)
    stat_dtype = statistics_dtype(logits.dtype)
    policy_logits = (logits / policy_temperature).to(stat_dtype)
    log_probs = F.log_softmax(policy_logits, dim=-1)
    return tokens, log_probs.gather(1, tokens[:, None]).squeeze(1), torch.logsumexp(policy_logits, dim=-1)
