"""The own-stream part of thought attention for ``impl="sdpa"``: each query's dot products with its own stream keys.

Query i at step r sees the stream keys (s, i), s = 1..r: for one position, a (G*m x d) block of queries (the group's
heads and the query steps) against an (a x d) block of keys. The ops run in a position-major layout,
(B, Hkv, n, G*m, X), as batched matmuls whose batch is the position: the keys are strided views of k (rows s*n + i),
so they are never copied (in fp32 and fp64), and no (query x key x head dim) product is materialised.
"""
from __future__ import annotations

import torch


class StreamPart:
    """Shapes: q-like tensors (B, Hq, m*n, d); grouped statistics (B, Hkv, G, m, n); ``probs`` (B, Hkv, n, G*m, a)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None,
                 grouped: tuple[int, int, int, int, int], stat_dtype: torch.dtype):
        self.k, self.v, self.key_valid = k, v, key_valid
        self.grouped = grouped
        self.n = grouped[-1]
        self.a = k.shape[2] // self.n - 1
        self.stat_dtype = stat_dtype

    def position_major(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hq, m*n, X) -> (B, Hkv, n, G*m, X) in the statistics dtype: a strided view of a contiguous x (the
        batched GEMMs read it as fast as a copy), else a contiguous copy (MKL is slow on broadcast or odd strides)."""
        b, hkv, g, m, n = self.grouped
        contiguous = x.is_contiguous() and x.dtype == self.stat_dtype
        x = x.reshape(b, hkv, g, m, n, -1).permute(0, 1, 4, 2, 3, 5)
        if not contiguous:
            x = x.to(self.stat_dtype).contiguous()
        return x.reshape(b, hkv, n, g * m, -1)

    def grouped_from_position_major(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, n, G*m, X) -> a (B, Hkv, G, m, n, X) view."""
        b, hkv, g, m, n = self.grouped
        return x.view(b, hkv, n, g, m, -1).permute(0, 1, 3, 4, 2, 5)

    def stats_position_major(self, x: torch.Tensor) -> torch.Tensor:
        """Grouped statistics (B, Hkv, G, m, n) -> a (B, Hkv, n, G*m) tensor."""
        b, hkv, g, m, n = self.grouped
        return x.permute(0, 1, 4, 2, 3).reshape(b, hkv, n, g * m)

    def stats_grouped(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, n, G*m) -> a grouped (B, Hkv, G, m, n) view."""
        return self.grouped_from_position_major(x[..., None])[..., 0]

    def _keys(self, x: torch.Tensor, batch: int, head: int) -> torch.Tensor:
        """Stream rows of k or v for one (batch, kv head): an (n, a, d) view (a copy only for 16-bit inputs)."""
        return x[batch, head, self.n:].view(self.a, self.n, -1).transpose(0, 1).to(self.stat_dtype)

    def _per_head(self, out: torch.Tensor, compute) -> torch.Tensor:
        """Fill ``out`` (B, Hkv, n, ...) with compute(batch, head, out[batch, head]) for every (batch, kv head):
        one batched matmul each, as the strided key views cannot merge the batch and head axes."""
        for batch in range(out.shape[0]):
            for head in range(out.shape[1]):
                compute(batch, head, out[batch, head])
        return out

    def _hidden(self) -> torch.Tensor:
        """Bool, broadcastable to (B, Hkv, n, G, m, a): query step r sees stream keys s <= r of its own position,
        and none if that position is padding."""
        m = self.grouped[3]
        device = self.k.device
        steps = torch.arange(self.a + 1 - m, self.a + 1, device=device)[:, None]
        hidden = torch.arange(1, self.a + 1, device=device)[None, :] > steps  # (m, a)
        if self.key_valid is not None:
            hidden = hidden | ~self.key_valid.to(torch.bool)[:, None, :, None, None, None]
        return hidden

    def scores(self, q: torch.Tensor, scale: float) -> torch.Tensor:
        """Masked scores (B, Hkv, n, G*m, a) of position-major queries."""
        b, hkv, g, m, n = self.grouped
        scores = q.new_empty(b, hkv, n, g * m, self.a)
        self._per_head(scores, lambda i, h, out: torch.bmm(q[i, h], self._keys(self.k, i, h).transpose(1, 2),
                                                           out=out))
        scores.mul_(scale)
        return scores.view(b, hkv, n, g, m, self.a).masked_fill_(self._hidden(), float("-inf")).view(scores.shape)

    def weighted_values(self, probs: torch.Tensor) -> torch.Tensor:
        """sum_s probs[..., s] * v_s: (B, Hkv, n, G*m, d)."""
        out = probs.new_empty(*probs.shape[:-1], self.v.shape[-1])
        return self._per_head(out, lambda i, h, res: torch.bmm(probs[i, h], self._keys(self.v, i, h), out=res))

    def backward(self, probs: torch.Tensor, q: torch.Tensor, grad_out: torch.Tensor, delta: torch.Tensor,
                 scale: float, dk: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
        """Writes the stream rows of ``dk`` and ``dv`` and returns the stream part's dq, position-major.

        probs, q, grad_out position-major; delta (B, Hkv, n, G*m) = rowsum(dO * O) - grad_lse."""
        stream_rows = (self.a, self.n, q.shape[-1])
        key_grads = _KeyGradients(q)

        def per_head(batch, head, dq):
            keys, values = self._keys(self.k, batch, head), self._keys(self.v, batch, head)
            head_probs, head_grad = probs[batch, head], grad_out[batch, head]
            d_scores = torch.bmm(head_grad, values.transpose(1, 2)).sub_(delta[batch, head, ..., None])
            d_scores.mul_(head_probs).mul_(scale)  # the scale of the scores, folded into their gradient
            torch.bmm(d_scores, keys, out=dq)
            key_grads.write(d_scores, q[batch, head], dk[batch, head, self.n:].view(stream_rows))
            key_grads.write(head_probs, head_grad, dv[batch, head, self.n:].view(stream_rows))

        return self._per_head(q.new_empty(q.shape), per_head)


# Up to this many query rows per position (G*m), the key gradients are that many broadcast multiply-adds straight
# into dK/dV; beyond it one batched GEMM into a buffer and a transposing copy is faster. Measured on CPU, fp32, 1
# thread, n = 1024, a = 12, d = 64, per head (ms, multiply-adds vs GEMM + copy): G*m = 1: 0.08 vs 1.8 (MKL's GEMM
# with an inner dimension of 1), 2: 0.19 vs 0.31, 4: 0.36 vs 0.36, 6: 0.54 vs 0.51, 8: 0.75 vs 0.59.
MULTIPLY_ADD_MAX_ROWS = 4


class _KeyGradients:
    """Key-side gradients of one head's stream part: out (a, n, d)[s, i] = sum_j coefficients[i, j, s] * rows[i, j]
    for coefficients (n, G*m, a) and rows (n, G*m, d), written into the stream rows of dK or dV."""

    def __init__(self, like: torch.Tensor):
        self.like = like
        self.buffer = None  # the GEMM route's (n, a, d) result, shared by every head: fresh pages cost more than it

    def write(self, coefficients: torch.Tensor, rows: torch.Tensor, out: torch.Tensor) -> None:
        query_rows = coefficients.shape[1]
        if query_rows <= MULTIPLY_ADD_MAX_ROWS:
            by_step = coefficients.permute(2, 0, 1)  # (a, n, G*m)
            torch.mul(by_step[..., 0, None], rows[None, :, 0], out=out)
            for j in range(1, query_rows):
                out.addcmul_(by_step[..., j, None], rows[None, :, j])
            return
        if self.buffer is None:
            self.buffer = self.like.new_empty(out.shape[1], out.shape[0], out.shape[2])
        # (a x G*m) operand made contiguous: MKL's batched GEMM took 4-9x longer on the transposed view.
        torch.bmm(coefficients.transpose(1, 2).contiguous(), rows, out=self.buffer)
        out.transpose(0, 1).copy_(self.buffer)
