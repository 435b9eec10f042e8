"""Backward kernel of the fused LM-head losses: d loss / d logits for one chunk of rows.

The backward keeps nothing (N, V)-sized from the forward. For a chunk of rows this kernel recomputes each logit
tile with fp32-accumulated dots, exactly as the forward did (so probabilities are consistent with the saved
log-sum-exp even for 16-bit inputs), and writes G = coef * inv_t * (softmax(z * inv_t) - onehot(target)) in the
input dtype. Two GEMMs then give dH = G @ W and dW += G^T @ H.
"""
import triton
import triton.language as tl

from .linear_softmax_common import logit_tile


@triton.jit
def linear_softmax_grad_kernel(
    H, W, LSE, TARGETS, COEF, BANNED, G,
    num_rows, vocab, hidden, stride_h, stride_w, stride_g, inv_t,
    HAS_BANNED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_in = rows < num_rows
    v_in = offs_v < vocab
    z = logit_tile(H, W, BANNED, rows, row_in, offs_v, v_in, hidden, stride_h, stride_w, HAS_BANNED,
                   BLOCK_M, BLOCK_V, BLOCK_K, UPCAST, DOT_PRECISION)
    lse = tl.load(LSE + rows, mask=row_in, other=0.0)
    coef = tl.load(COEF + rows, mask=row_in, other=0.0) * inv_t
    targets = tl.load(TARGETS + rows, mask=row_in, other=-1)
    probs = tl.exp(z * inv_t - lse[:, None])
    grad = coef[:, None] * (probs - tl.where(offs_v[None, :] == targets[:, None], 1.0, 0.0))
    ptrs = G + rows.to(tl.int64)[:, None] * stride_g + offs_v[None, :]
    tl.store(ptrs, grad.to(G.dtype.element_ty), mask=row_in[:, None] & v_in[None, :])
