"""Memory-efficient thought attention in plain PyTorch: the CPU fallback and a second oracle.

No dense mask and no (n x n*(a+1)) scores: queries are processed in chunks of positions; each chunk scores its
causal prefix keys with one matmul and its own a stream keys as per-row dot products, in one softmax. The backward
recomputes the chunk scores from the saved log-sum-exp (flash-attention style), so memory stays O(chunk) beyond
the inputs, outputs and their gradients. Statistics are fp32 (fp64 for fp64 inputs).
"""
from __future__ import annotations

import torch

from .checks import AttentionCall

# Score elements per chunk (all heads and query steps together): bounds the temporaries at a few MB.
_SCORE_CHUNK_ELEMENTS = 1 << 20


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _position_chunks(call: AttentionCall):
    """Yield (i0, i1, j0): query positions [i0, i1) and their first reachable prefix key j0."""
    layout = call.layout
    n, a, m = layout.prefix_len, layout.num_stream_steps, layout.num_query_steps
    rows_per_position = call.batch * call.num_q_heads * m * (n + a)
    chunk = max(1, min(n, _SCORE_CHUNK_ELEMENTS // rows_per_position))
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        j0 = 0 if layout.sliding_window is None else max(0, i0 - layout.sliding_window + 1)
        yield i0, i1, j0


def _chunk_allowed(call: AttentionCall, i0: int, i1: int, j0: int, device: torch.device) -> torch.Tensor:
    """Bool (B or 1, 1, 1, m, c, L + a): prefix keys j0..i1-1, then stream steps 1..a, for positions i0..i1-1."""
    layout = call.layout
    a, m = layout.num_stream_steps, layout.num_query_steps
    i = torch.arange(i0, i1, device=device)[:, None]
    j = torch.arange(j0, i1, device=device)[None, :]
    prefix = j <= i
    if layout.sliding_window is not None:
        prefix = prefix & (i - j < layout.sliding_window)
    prefix = prefix[None]  # (1, c, L)
    steps = torch.arange(layout.first_query_step, a + 1, device=device)[:, None, None]
    stream = (torch.arange(1, a + 1, device=device)[None, None, :] <= steps).expand(m, i1 - i0, a)[None]
    if layout.key_padding_mask is not None:
        valid = layout.key_padding_mask.to(device)
        prefix = prefix & valid[:, None, j0:i1]
        stream = stream & valid[:, None, i0:i1, None]
    prefix = prefix[:, None].expand(-1, m, -1, -1)
    return torch.cat([prefix, stream.expand(prefix.shape[0], -1, -1, -1)], dim=-1)[:, None, None]


class _ChunkInputs:
    """Views of q/k/v for one position chunk, in the compute dtype, grouped by kv head."""

    def __init__(self, call: AttentionCall, q, k, v, i0: int, i1: int, j0: int):
        layout = call.layout
        n, a, m = layout.prefix_len, layout.num_stream_steps, layout.num_query_steps
        b, hkv, d = call.batch, call.num_kv_heads, call.head_dim
        cdtype = _compute_dtype(q.dtype)
        self.q = q.reshape(b, hkv, call.group_size, m, n, d)[..., i0:i1, :].to(cdtype)
        self.k0 = k[:, :, j0:i1].to(cdtype)
        self.v0 = v[:, :, j0:i1].to(cdtype)
        self.ks = k[:, :, n:].reshape(b, hkv, a, n, d)[..., i0:i1, :].to(cdtype)
        self.vs = v[:, :, n:].reshape(b, hkv, a, n, d)[..., i0:i1, :].to(cdtype)
        self.prefix_keys = i1 - j0

    def flat_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, G, m, c, X) -> (B, Hkv, G*m*c, X) for one matmul against the shared prefix keys."""
        return x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1])

    def scores(self, allowed: torch.Tensor, scale: float) -> torch.Tensor:
        prefix = torch.matmul(self.flat_rows(self.q), self.k0.transpose(-1, -2)).view(*self.q.shape[:-1], -1)
        stream = torch.einsum("bhgmcd,bhscd->bhgmcs", self.q, self.ks)
        return (torch.cat([prefix, stream], dim=-1) * scale).masked_fill(~allowed, float("-inf"))

    def attend(self, probs: torch.Tensor) -> torch.Tensor:
        """probs (B, Hkv, G, m, c, L + a) -> probs @ [V0 ; own stream values], (B, Hkv, G, m, c, d)."""
        p_prefix, p_stream = probs.split([self.prefix_keys, probs.shape[-1] - self.prefix_keys], dim=-1)
        out = torch.matmul(self.flat_rows(p_prefix), self.v0).view(*self.q.shape)
        return out + torch.einsum("bhgmcs,bhscd->bhgmcd", p_stream, self.vs)


class _ThoughtAttentionTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, call: AttentionCall):
        layout = call.layout
        n, m = layout.prefix_len, layout.num_query_steps
        b, hkv, g, d = call.batch, call.num_kv_heads, call.group_size, call.head_dim
        out = torch.empty(b, hkv, g, m, n, d, dtype=q.dtype, device=q.device)
        lse = torch.empty(b, hkv, g, m, n, dtype=_compute_dtype(q.dtype), device=q.device)
        for i0, i1, j0 in _position_chunks(call):
            chunk = _ChunkInputs(call, q, k, v, i0, i1, j0)
            allowed = _chunk_allowed(call, i0, i1, j0, q.device)
            has_key = allowed.any(dim=-1, keepdim=True)
            scores = chunk.scores(allowed, call.softmax_scale).masked_fill(~has_key, 0.0)
            chunk_lse = torch.logsumexp(scores, dim=-1, keepdim=True)
            probs = torch.exp(scores - chunk_lse).masked_fill(~has_key, 0.0)
            out[..., i0:i1, :] = chunk.attend(probs).to(q.dtype)
            lse[..., i0:i1] = chunk_lse.masked_fill(~has_key, float("-inf")).squeeze(-1)
        out = out.view(b, hkv * g, m * n, d)
        lse = lse.view(b, hkv * g, m * n)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.call = call
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        call: AttentionCall = ctx.call
        layout = call.layout
        n, a, m = layout.prefix_len, layout.num_stream_steps, layout.num_query_steps
        b, hkv, g, d = call.batch, call.num_kv_heads, call.group_size, call.head_dim
        cdtype = _compute_dtype(q.dtype)
        grouped = (b, hkv, g, m, n)
        grad_out = grad_out.reshape(*grouped, d)
        out = out.reshape(*grouped, d)
        # Rows without keys have lse = -inf; +inf makes their recomputed probabilities exactly 0.
        lse = lse.reshape(grouped).masked_fill(lse.reshape(grouped) == float("-inf"), float("inf"))
        grad_lse = grad_lse.reshape(grouped)
        dq = torch.empty(*grouped, d, dtype=q.dtype, device=q.device)
        dk0 = torch.zeros(b, hkv, n, d, dtype=cdtype, device=q.device)
        dv0 = torch.zeros_like(dk0)
        dks = torch.zeros(b, hkv, a, n, d, dtype=cdtype, device=q.device)
        dvs = torch.zeros_like(dks)
        scale = call.softmax_scale
        for i0, i1, j0 in _position_chunks(call):
            chunk = _ChunkInputs(call, q, k, v, i0, i1, j0)
            allowed = _chunk_allowed(call, i0, i1, j0, q.device)
            probs = torch.exp(chunk.scores(allowed, scale) - lse[..., i0:i1, None])
            d_out = grad_out[..., i0:i1, :].to(cdtype)
            delta = (d_out * out[..., i0:i1, :].to(cdtype)).sum(-1)
            delta = delta - grad_lse[..., i0:i1].to(cdtype)
            d_probs = torch.cat(
                [
                    torch.matmul(chunk.flat_rows(d_out), chunk.v0.transpose(-1, -2)).view(*d_out.shape[:-1], -1),
                    torch.einsum("bhgmcd,bhscd->bhgmcs", d_out, chunk.vs),
                ],
                dim=-1,
            )
            d_scores = probs * (d_probs - delta[..., None]) * scale
            ds_prefix, ds_stream = d_scores.split([chunk.prefix_keys, a], dim=-1)
            p_prefix, p_stream = probs.split([chunk.prefix_keys, a], dim=-1)
            dq_chunk = torch.matmul(chunk.flat_rows(ds_prefix), chunk.k0).view(*d_out.shape)
            dq[..., i0:i1, :] = (dq_chunk + torch.einsum("bhgmcs,bhscd->bhgmcd", ds_stream, chunk.ks)).to(q.dtype)
            dk0[:, :, j0:i1] += torch.matmul(chunk.flat_rows(ds_prefix).transpose(-1, -2), chunk.flat_rows(chunk.q))
            dv0[:, :, j0:i1] += torch.matmul(chunk.flat_rows(p_prefix).transpose(-1, -2), chunk.flat_rows(d_out))
            dks[..., i0:i1, :] += torch.einsum("bhgmcs,bhgmcd->bhscd", ds_stream, chunk.q)
            dvs[..., i0:i1, :] += torch.einsum("bhgmcs,bhgmcd->bhscd", p_stream, d_out)
        dk = torch.cat([dk0, dks.reshape(b, hkv, a * n, d)], dim=2).to(k.dtype)
        dv = torch.cat([dv0, dvs.reshape(b, hkv, a * n, d)], dim=2).to(v.dtype)
        return dq.view(b, hkv * g, m * n, d), dk, dv, None


def torch_thought_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked attention with recompute in backward. Shapes as ``thought_attention``; returns (o, lse).

    lse is fp32 (fp64 for fp64 inputs).
    """
    return _ThoughtAttentionTorch.apply(q, k, v, call)
