"""The math of ``impl="sdpa"``: thought attention from PyTorch's fused attention kernels plus an exact merge.

Per query, thought attention is causal attention over the prefix plus r dot products with the query's own stream
keys. The prefix part runs in a fused kernel that returns its log-sum-exp (``fused_prefix``), the stream part in
batched torch ops, and the two merge exactly in fp32: lse = logaddexp(lse_prefix, lse_stream),
o = exp(lse_prefix - lse) * o_prefix + sum_s exp(score_s - lse) * v_s.

The backward feeds the fused kernel's backward the MERGED output and log-sum-exp, which gives the prefix keys their
exact share of the gradients (the identity ring attention rests on), and adds the stream part's gradients.

Query steps fold into heads: q (B, Hq, m*n, d) is read as (B, Hq*m, n, d), whose head h*m + r maps to K/V head
h // G, so the m steps share the prefix K/V with no copy and no loop. How the prefix is masked (``PrefixPlan``):

* "causal": no padding, or every token real. Plain causal attention.
* "right_padded": each row is real up to a length L_b and padding after. Real queries see only real keys under
  causality; the padded queries (which see all L_b real keys and no stream key) take one extra non-causal call per
  padded row, and the main call ignores them.
* "masked" (CPU): left padding, holes or a sliding window. The prefix mask of ``quietstar_fast.mask`` as an additive
  (B or 1, 1, n, n) tensor: the CPU kernel takes one, at the cost of n*n elements per row.
* "delegate" (CUDA): what the flash kernel cannot mask goes to the Triton kernels.

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
    kind: str  # "causal", "right_padded", "masked" or "delegate"
    lengths: tuple[int, ...] = ()  # right_padded: the real tokens of each batch row
    allowed: torch.Tensor | None = None  # masked: (B or 1, 1, n, n) bool


def prefix_plan(key_valid: torch.Tensor | None, prefix_len: int, sliding_window: int, device: torch.device
                ) -> PrefixPlan:
    """How the prefix part of a call is masked; ``key_valid`` (B, n) (True/1 = real token), window 0 = none."""
    if key_valid is not None:
        valid = key_valid.to(torch.bool)
        lengths = valid.sum(dim=1)
        positions = torch.arange(prefix_len, device=valid.device)
        if not sliding_window and bool(torch.equal(valid, positions[None] < lengths[:, None])):
            if bool((lengths == prefix_len).all()):
                return PrefixPlan("causal")
            return PrefixPlan("right_padded", lengths=tuple(lengths.tolist()))
    elif not sliding_window:
        return PrefixPlan("causal")
    if device.type != "cpu":
        return PrefixPlan("delegate")
    mask = None if key_valid is None else key_valid.to(torch.bool)
    allowed = official_step_mask(prefix_len, 0, mask, sliding_window or None, device=device) == 0
    return PrefixPlan("masked", allowed=allowed)


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


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def _prefix_attention(p: _Problem, plan: PrefixPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefix part: o (B, Hq*m, n, d), lse (B, Hq*m, n) with -inf where a query sees no prefix key."""
    q = p.heads(p.q)
    k, v = p.prefix_kv()
    if plan.kind == "masked":
        out, lse = prefix_forward(q, k, v, p.scale, causal=False, additive_mask=_additive(plan.allowed, q.dtype))
        return out, lse.masked_fill(~plan.allowed.any(dim=-1), float("-inf"))  # (B or 1, 1, n) over the heads
    out, lse = prefix_forward(q, k, v, p.scale, causal=True)
    for row, length in enumerate(plan.lengths):
        if length == p.n:
            continue
        if length == 0:
            out[row].zero_()
            lse[row].fill_(float("-inf"))
            continue
        pad_out, pad_lse = prefix_forward(q[row:row + 1, :, length:], k[row:row + 1, :, :length],
                                          v[row:row + 1, :, :length], p.scale, causal=False)
        out[row, :, length:] = pad_out[0]
        lse[row, :, length:] = pad_lse[0]
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
    plan = prefix_plan(key_valid, prefix_len, sliding_window, q.device)
    if plan.kind == "delegate":
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
    plan = prefix_plan(key_valid, prefix_len, sliding_window, q.device)
    if plan.kind == "delegate":
        from .triton_impl import thought_attention_bwd

        return thought_attention_bwd(q, k, v, out, lse, grad_out, grad_lse,
                                     None if key_valid is None else key_valid.to(torch.int8),
                                     prefix_len, sliding_window, softmax_scale)
    if grad_lse is not None and not bool(torch.any(grad_lse != 0)):
        grad_lse = None
    n = p.n
    head_q, head_out, head_grad = p.heads(q), p.heads(out), p.heads(grad_out)
    head_lse = p.head_stats(_positive_infinity_where_empty(lse))
    head_grad_lse = None if grad_lse is None else p.head_stats(grad_lse)
    prefix_k, prefix_v = p.prefix_kv()
    main_grad, main_lse, main_grad_lse = head_grad, head_lse, head_grad_lse
    if plan.lengths:
        # The main call must not see the padded queries: zero output gradient and P = 0 there.
        main_grad, main_lse = head_grad.clone(), head_lse.clone()
        main_grad_lse = None if head_grad_lse is None else head_grad_lse.clone()
        for row, length in enumerate(plan.lengths):
            main_grad[row, :, length:] = 0
            main_lse[row, :, length:] = float("inf")
            if main_grad_lse is not None:
                main_grad_lse[row, :, length:] = 0
    mask = None if plan.kind != "masked" else _additive(plan.allowed, q.dtype)
    dq, dk_prefix, dv_prefix = prefix_backward(main_grad, head_q, prefix_k, prefix_v, head_out, main_lse,
                                               p.scale, causal=mask is None, additive_mask=mask,
                                               grad_lse=main_grad_lse)
    dq = dq.to(p.cdtype)
    dk = torch.empty(k.shape, dtype=p.cdtype, device=k.device)
    dv = torch.empty_like(dk)
    dk[:, :, :n], dv[:, :, :n] = dk_prefix, dv_prefix
    for row, length in enumerate(plan.lengths):
        if not 0 < length < n:
            continue  # no padded query, or no real key for them to see
        rows, padded = slice(row, row + 1), slice(length, n)
        pad_dq, pad_dk, pad_dv = prefix_backward(
            head_grad[rows, :, padded], head_q[rows, :, padded], prefix_k[rows, :, :length],
            prefix_v[rows, :, :length], head_out[rows, :, padded], head_lse[rows, :, padded], p.scale,
            causal=False, grad_lse=None if head_grad_lse is None else head_grad_lse[rows, :, padded])
        dq[rows, :, padded] += pad_dq
        dk[rows, :, :length] += pad_dk
        dv[rows, :, :length] += pad_dv
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
