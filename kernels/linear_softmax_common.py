"""Pieces shared by the LM-head loss kernels."""
import triton
import triton.language as tl

# The official code overwrites banned logits with this value (not -inf), so keep it bit for bit.
BANNED_LOGIT = tl.constexpr(-1e10)


@triton.jit
def logit_tile(H, W, BANNED, rows, row_in, offs_v, v_in, hidden, stride_h, stride_w, HAS_BANNED: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
               UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_V) fp32 tile of H[rows] @ W[offs_v]^T, 64-bit row offsets; banned ids (int8 flags in BANNED)
    get BANNED_LOGIT."""
    acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
    h_rows = H + rows.to(tl.int64)[:, None] * stride_h
    w_rows = W + offs_v.to(tl.int64)[:, None] * stride_w
    for k0 in range(0, hidden, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_in = offs_k < hidden
        h = tl.load(h_rows + offs_k[None, :], mask=row_in[:, None] & k_in[None, :], other=0.0)
        w = tl.load(w_rows + offs_k[None, :], mask=v_in[:, None] & k_in[None, :], other=0.0)
        if UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
    if HAS_BANNED:
        banned = tl.load(BANNED + offs_v, mask=v_in, other=0) != 0
        acc = tl.where(banned[None, :], BANNED_LOGIT, acc)
    return acc
