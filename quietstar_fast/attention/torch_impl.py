"""Memory-efficient thought attention in plain PyTorch: the CPU fallback and a second oracle.

No dense mask and no (n x n*(a+1)) scores: queries are processed in chunks of positions. A chunk scores its causal
prefix keys with one matmul and its own a stream keys as per-row dot products, and merges both into one softmax
through shared statistics (max, sum). The backward recomputes the chunk's probabilities from the saved
log-sum-exp (flash-attention style), so memory beyond inputs, outputs and gradients stays O(chunk). Statistics are
fp32 (fp64 for fp64 inputs); large temporaries are updated in place to keep passes over memory few.
"""
from __future__ import annotations

import torch

from .._platform import statistics_dtype
from .checks import AttentionCall

# Prefix score elements per chunk (all heads and query steps together), by device type: a few MB of temporaries on
# CPU; on a GPU 128 MB, which keeps the launches per call few (a 1B model's step at B*P = 16, n = 256 takes 4 chunks
# per call instead of 128). ``quietstar_fast.memory`` sizes meta-device chunks as on the device it estimates for.
SCORE_CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 25}


def _position_chunks(call: AttentionCall, device: torch.device):
    """Yield (i0, i1, j0): query positions [i0, i1) and their first reachable prefix key j0."""
    layout = call.layout
    n, m = layout.prefix_len, layout.num_query_steps
    budget = SCORE_CHUNK_ELEMENTS.get(device.type, SCORE_CHUNK_ELEMENTS["cuda"])
    chunk = max(1, min(n, budget // (call.batch * call.num_q_heads * m * n)))
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        j0 = 0 if layout.sliding_window is None else max(0, i0 - layout.sliding_window + 1)
        yield i0, i1, j0


class _Chunk:
    """One chunk of query positions [i0, i1), grouped by kv head: (B, Hkv, G, m, c, ...)."""

    def __init__(self, call: AttentionCall, q, k, v, i0: int, i1: int, j0: int):
        layout = call.layout
        n, a, m = layout.prefix_len, layout.num_stream_steps, layout.num_query_steps
        b, hkv, d = call.batch, call.num_kv_heads, call.head_dim
        cdtype = statistics_dtype(q.dtype)
        # Queries carry the softmax scale, so scores need no extra pass (dK then needs no rescaling either).
        self.q = q.reshape(b, hkv, call.group_size, m, n, d)[..., i0:i1, :].to(cdtype) * call.softmax_scale
        self.k0, self.v0 = k[:, :, j0:i1].to(cdtype), v[:, :, j0:i1].to(cdtype)
        self.ks = k[:, :, n:].reshape(b, hkv, a, n, d)[..., i0:i1, :].to(cdtype)
        self.vs = v[:, :, n:].reshape(b, hkv, a, n, d)[..., i0:i1, :].to(cdtype)
        self.has_stream = a > 0

        device = q.device
        i = torch.arange(i0, i1, device=device)[:, None]
        j = torch.arange(j0, i1, device=device)[None, :]
        prefix = j <= i
        if layout.sliding_window is not None:
            prefix = prefix & (i - j < layout.sliding_window)
        steps = torch.arange(layout.first_query_step, a + 1, device=device)[:, None, None]
        stream = (torch.arange(1, a + 1, device=device)[None, None, :] <= steps).expand(m, i1 - i0, a)[None]
        if layout.key_padding_mask is not None:
            valid = layout.key_padding_mask
            prefix = prefix[None] & valid[:, None, j0:i1]
            stream = stream & valid[:, None, i0:i1, None]
        # Broadcast shapes: prefix (B or 1, 1, 1, 1, c, L), stream (B or 1, 1, 1, m, c, a).
        self.prefix_hidden = ~prefix.reshape(-1, 1, 1, 1, i1 - i0, i1 - j0)
        self.stream_hidden = ~stream.reshape(stream.shape[0], 1, 1, m, i1 - i0, a)

    @staticmethod
    def rows(x: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, G, m, c, X) -> (B, Hkv, G*m*c, X): one matmul against the shared prefix keys."""
        return x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1])

    def prefix_scores(self) -> torch.Tensor:
        scores = torch.matmul(self.rows(self.q), self.k0.transpose(-1, -2)).view(*self.q.shape[:-1], -1)
        return scores.masked_fill_(self.prefix_hidden, float("-inf"))

    def stream_scores(self) -> torch.Tensor:
        # Out of place: einsum returns a permuted view, and torch.compile cannot functionalise an in-place update of
        # it (the inverse view does not exist).
        scores = torch.einsum("bhgmcd,bhscd->bhgmcs", self.q, self.ks)
        return scores.masked_fill(self.stream_hidden, float("-inf"))

    def prefix_times(self, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """weights (B, Hkv, G, m, c, L) @ values (B, Hkv, L, d) -> (B, Hkv, G, m, c, d)."""
        return torch.matmul(self.rows(weights), values).view(*weights.shape[:-1], values.shape[-1])


class _ThoughtAttentionTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, call: AttentionCall):
        layout = call.layout
        n, m = layout.prefix_len, layout.num_query_steps
        b, hkv, g, d = call.batch, call.num_kv_heads, call.group_size, call.head_dim
        out = torch.empty(b, hkv, g, m, n, d, dtype=q.dtype, device=q.device)
        lse = torch.empty(b, hkv, g, m, n, dtype=statistics_dtype(q.dtype), device=q.device)
        for i0, i1, j0 in _position_chunks(call, q.device):
            chunk = _Chunk(call, q, k, v, i0, i1, j0)
            probs = chunk.prefix_scores()
            row_max = probs.amax(dim=-1)
            if chunk.has_stream:
                stream_probs = chunk.stream_scores()
                row_max = torch.maximum(row_max, stream_probs.amax(dim=-1))
            # Rows that see no key keep max -inf; shift by 0 there so that their probabilities are exactly 0.
            shift = row_max.masked_fill(torch.isinf(row_max), 0.0)[..., None]
            probs.sub_(shift).exp_()
            row_sum = probs.sum(dim=-1)
            acc = chunk.prefix_times(probs, chunk.v0)
            if chunk.has_stream:
                stream_probs.sub_(shift).exp_()
                row_sum += stream_probs.sum(dim=-1)
                acc += torch.einsum("bhgmcs,bhscd->bhgmcd", stream_probs, chunk.vs)
            seen = row_sum != 0  # a NaN sum (NaN input) counts as seen: the NaN reaches o and lse
            out[..., i0:i1, :] = acc / torch.where(seen, row_sum, 1.0)[..., None]
            lse[..., i0:i1] = torch.where(seen, shift[..., 0] + torch.log(row_sum), float("-inf"))
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
        cdtype = statistics_dtype(q.dtype)
        grouped = (b, hkv, g, m, n)
        grad_out = grad_out.reshape(*grouped, d)
        out = out.reshape(*grouped, d)
        # Rows without keys have lse = -inf; +inf makes their recomputed probabilities exactly 0.
        lse = lse.reshape(grouped)
        lse = lse.masked_fill(lse == float("-inf"), float("inf"))
        grad_lse = grad_lse.reshape(grouped)
        dq = torch.empty(*grouped, d, dtype=q.dtype, device=q.device)
        # Accumulators in the key layout; prefix and stream parts are views, so no concatenation at the end.
        dk = torch.zeros(b, hkv, (a + 1) * n, d, dtype=cdtype, device=q.device)
        dv = torch.zeros_like(dk)
        dks, dvs = dk[:, :, n:].view(b, hkv, a, n, d), dv[:, :, n:].view(b, hkv, a, n, d)
        for i0, i1, j0 in _position_chunks(call, q.device):
            chunk = _Chunk(call, q, k, v, i0, i1, j0)
            chunk_lse = lse[..., i0:i1, None]
            d_out = grad_out[..., i0:i1, :].to(cdtype)
            delta = ((d_out * out[..., i0:i1, :].to(cdtype)).sum(-1) - grad_lse[..., i0:i1].to(cdtype))[..., None]
            probs = chunk.prefix_scores().sub_(chunk_lse).exp_()
            d_scores = chunk.prefix_times(d_out, chunk.v0.transpose(-1, -2)).sub_(delta).mul_(probs)
            dq_chunk = chunk.prefix_times(d_scores, chunk.k0)
            dk[:, :, j0:i1] += torch.matmul(chunk.rows(d_scores).transpose(-1, -2), chunk.rows(chunk.q))
            dv[:, :, j0:i1] += torch.matmul(chunk.rows(probs).transpose(-1, -2), chunk.rows(d_out))
            if chunk.has_stream:
                stream_probs = chunk.stream_scores().sub_(chunk_lse).exp_()
                d_stream = (torch.einsum("bhgmcd,bhscd->bhgmcs", d_out, chunk.vs) - delta) * stream_probs
                dq_chunk += torch.einsum("bhgmcs,bhscd->bhgmcd", d_stream, chunk.ks)
                dks[..., i0:i1, :] += torch.einsum("bhgmcs,bhgmcd->bhscd", d_stream, chunk.q)
                dvs[..., i0:i1, :] += torch.einsum("bhgmcs,bhgmcd->bhscd", stream_probs, d_out)
            dq[..., i0:i1, :] = dq_chunk * call.softmax_scale
        return dq.view(b, hkv * g, m * n, d), dk.to(k.dtype), dv.to(v.dtype), None


def torch_thought_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttentionCall
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked attention with recompute in backward. Shapes as ``thought_attention``; returns (o, lse).

    lse is fp32 (fp64 for fp64 inputs).
    """
    return _ThoughtAttentionTorch.apply(q, k, v, call)
