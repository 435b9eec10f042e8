"""The math of ``impl="sdpa"``: thought attention from PyTorch's fused attention kernels plus an exact merge.

Per query, thought attention is causal attention over the prefix plus r dot products with the query's own stream
keys. The prefix part runs in a fused kernel that returns its log-sum-exp (``fused_prefix``), the stream part in
batched torch ops, and the two merge exactly in fp32: lse = logaddexp(lse_prefix, lse_stream),
o = exp(lse_prefix - lse) * o_prefix + sum_s exp(score_s - lse) * v_s.

The backward feeds the fused kernel's backward the MERGED output and log-sum-exp, which gives the prefix keys their
exact share of the gradients (the identity ring attention rests on), and adds the stream part's gradients.

Query steps fold into heads: q (B, Hq, m*n, d) is read as (B, Hq*m, n, d), whose head h*m + r maps to K/V head
h // G, so the m steps share the prefix K/V with no copy and no loop. How the prefix is masked (``PrefixPlan``) is
decided from which arguments a call has, never from their values, so no call makes the host wait for the device:

* no padding and no window: plain causal attention;
* CPU: the causal kernel plus an additive mask built on the device: (B, 1, 1, n) over the keys for padding of any
  shape (right, left, holes), (B or 1, 1, n, n) from ``quietstar_fast.mask`` for a sliding window;
* CUDA: the flash kernel takes no mask, so padding or a window goes to the Triton kernels ("delegate").

``sdpa_impl`` wraps both directions in custom ops, so the data-dependent choice of plan stays out of torch.compile's
graphs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._platform import statistics_dtype
from ..mask import official_step_mask
from .fused_prefix import prefix_backward, prefix_forward
from .stream_part import StreamPart


@dataclass(frozen=True)
class PrefixPlan:
    delegate: bool = False  # CUDA with padding or a window: the Triton kernels take the whole call
    additive_mask: torch.Tensor | None = None  # (B, 1, 1, n) or (B or 1, 1, n, n) in the inputs' dtype; None = causal
    has_key: torch.Tensor | None = None  # (B or 1, 1, n) bool: the query sees a prefix key; None = every query does


def prefix_plan(key_valid: torch.Tensor | None, prefix_len: int, sliding_window: int, device: torch.device,
                dtype: torch.dtype) -> PrefixPlan:
    """How the prefix part of a call on ``device`` with inputs of ``dtype`` is masked; ``key_valid`` (B, n)
    (True/1 = real token), window 0 = none. Reads no value of ``key_valid``."""
    if key_valid is None and not sliding_window:
        return PrefixPlan()
    if device.type != "cpu":
        return PrefixPlan(delegate=True)
    if sliding_window:
        mask = None if key_valid is None else key_valid.to(torch.bool)
        allowed = official_step_mask(prefix_len, 0, mask, sliding_window, device=device) == 0
        has_key = allowed.any(dim=-1)
    else:
        allowed = key_valid.to(torch.bool)[:, None, None, :]
        has_key = (key_valid.to(torch.int32).cumsum(dim=-1) > 0)[:, None]  # a real key at or before the query
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
    return PrefixPlan(additive_mask=additive, has_key=has_key)


class _Problem:
    """One call's tensors in the shapes the pieces need."""

    def __init__(self, q, k, v, prefix_len: int, softmax_scale: float):
        b, hq, t, d = q.shape
        hkv, n = k.shape[1], prefix_len
        self.n, self.a = n, k.shape[2] // n - 1
        self.grouped = (b, hkv, hq // hkv, t // n, n)
        self.scale = softmax_scale
        self.q, self.k, self.v = q, k, v
        self.cdtype = statistics_dtype(q.dtype)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hq, m*n, X) -> (B, Hq*m, n, X): query steps folded into heads (a copy only for non-viewable x)."""
        return x.reshape(x.shape[0], -1, self.n, x.shape[-1])

    def head_stats(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1, self.n)

    def prefix_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[:, :, :self.n], self.v[:, :, :self.n]


def _prefix_attention(p: _Problem, plan: PrefixPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefix part: o (B, Hq*m, n, d), lse (B, Hq*m, n) with -inf where a query sees no prefix key."""
    k, v = p.prefix_kv()
    out, lse = prefix_forward(p.heads(p.q), k, v, p.scale, causal=True, additive_mask=plan.additive_mask)
    if plan.has_key is not None:
        lse = lse.masked_fill(~plan.has_key, float("-inf"))  # broadcast over the heads
    return out, lse


def _positive_infinity_where_empty(lse: torch.Tensor) -> torch.Tensor:
    """Rows without keys have lse = -inf; +inf makes exp(score - lse) exactly 0 there."""
    return lse.masked_fill(lse == float("-inf"), float("inf"))


def stream_probs_shape(q: torch.Tensor, k: torch.Tensor, prefix_len: int) -> tuple[int, ...]:
    """(B, Hkv, n, G*m, a), or (0,) without stream keys: the probabilities the forward keeps for the backward."""
    batch, kv_heads, stream_steps = k.shape[0], k.shape[1], k.shape[2] // prefix_len - 1
    query_rows = q.shape[1] // kv_heads * (q.shape[2] // prefix_len)
    return (batch, kv_heads, prefix_len, query_rows, stream_steps) if stream_steps else (0,)


def sdpa_forward(q, k, v, key_valid, prefix_len: int, sliding_window: int, softmax_scale: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o, lse, the stream keys' probabilities under the merged softmax (B, Hkv, n, G*m, a), for the backward)."""
    p = _Problem(q, k, v, prefix_len, softmax_scale)
    plan = prefix_plan(key_valid, prefix_len, sliding_window, q.device, q.dtype)
    if plan.delegate:
        from .triton_impl import thought_attention_fwd

        out, lse = thought_attention_fwd(q, k, v, None if key_valid is None else key_valid.to(torch.int8),
                                         prefix_len, sliding_window, softmax_scale)
        return out, lse, lse.new_empty(stream_probs_shape(q, k, prefix_len))  # unused by the Triton backward
    prefix_out, prefix_lse = _prefix_attention(p, plan)
    prefix_lse = prefix_lse.reshape(p.grouped)
    prefix_out = prefix_out.reshape(*p.grouped, -1)
    if p.a == 0:
        return prefix_out.reshape(q.shape), prefix_lse.reshape(q.shape[:3]), prefix_lse.new_empty(0)
    stream = StreamPart(k, v, key_valid, p.grouped, p.cdtype)
    scores = stream.scores(stream.position_major(q), p.scale)
    lse = torch.logaddexp(prefix_lse, stream.stats_grouped(torch.logsumexp(scores, dim=-1)))
    divisor = _positive_infinity_where_empty(lse)
    probs = scores.sub_(stream.stats_position_major(divisor)[..., None]).exp_()
    out = prefix_out.to(p.cdtype)  # the fused kernel's own output buffer for fp32 and fp64: updated in place
    out.mul_(torch.exp(prefix_lse - divisor)[..., None])
    out += stream.grouped_from_position_major(stream.weighted_values(probs))
    return out.to(q.dtype).reshape(q.shape), lse.reshape(q.shape[:3]), probs


def sdpa_backward(q, k, v, out, lse, stream_probs, grad_out, grad_lse, key_valid, prefix_len: int,
                  sliding_window: int, softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p = _Problem(q, k, v, prefix_len, softmax_scale)
    plan = prefix_plan(key_valid, prefix_len, sliding_window, q.device, q.dtype)
    if plan.delegate:
        from .triton_impl import thought_attention_bwd

        return thought_attention_bwd(q, k, v, out, lse, grad_out, grad_lse,
                                     None if key_valid is None else key_valid.to(torch.int8),
                                     prefix_len, sliding_window, softmax_scale)
    n = p.n
    prefix_k, prefix_v = p.prefix_kv()
    dq, dk_prefix, dv_prefix = prefix_backward(
        p.heads(grad_out), p.heads(q), prefix_k, prefix_v, p.heads(out),
        p.head_stats(_positive_infinity_where_empty(lse)), p.scale, causal=True, additive_mask=plan.additive_mask,
        grad_lse=None if grad_lse is None else p.head_stats(grad_lse))
    dq = dq.to(p.cdtype)
    dk = torch.empty(k.shape, dtype=p.cdtype, device=k.device)
    dv = torch.empty_like(dk)
    dk[:, :, :n], dv[:, :, :n] = dk_prefix, dv_prefix
    dq = dq.reshape(*p.grouped, -1)
    if p.a > 0:
        stream = StreamPart(k, v, key_valid, p.grouped, p.cdtype)
        delta = (grad_out.to(p.cdtype) * out.to(p.cdtype)).sum(-1).reshape(p.grouped)
        if grad_lse is not None:
            delta -= grad_lse.reshape(p.grouped).to(p.cdtype)
        dq_stream = stream.backward(stream_probs, stream.position_major(q), stream.position_major(grad_out),
                                    stream.stats_position_major(delta), p.scale, dk, dv)
        dq += stream.grouped_from_position_major(dq_stream)
    return dq.to(q.dtype).reshape(q.shape), dk.to(k.dtype), dv.to(v.dtype)
