"""Forward kernel of thought-aware attention.

One program per (block of BLOCK_M positions, batch*query head, query step). It runs an online softmax over
  1. the block's own stream keys, one step at a time, as row-wise dot products of the same positions
     (a rows of d values each) -- never as dense diagonal tiles. They come first: their loop needs few registers,
     and the prefix loop then runs with the usual flash-attention live set (fewer spills on sm_90);
  2. the prefix key tiles the block can see: tiles strictly below the diagonal without the causal test, then the
     diagonal tiles with it (a sliding window moves the first tile; padding is tested per key).
Statistics are fp32, in the log2 domain; the stored LSE is natural-log, -inf for rows that see no key.
"""
import triton
import triton.language as tl

from .thought_attention_common import (
    LN2,
    LOG2E,
    block_program,
    head_offset,
    load_rows,
    load_valid,
    prefix_key_range,
    prefix_visible,
    store_rows,
)


@triton.jit
def _online_softmax_update(m_i, scores):
    """Running max with a (BLOCK_M, X) score tile; returns (new max, rescale of the old sums, probs)."""
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    # A row that has seen no key yet keeps max -inf; shift by 0 there so that exp2 gives 0, not NaN.
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, tl.math.exp2(m_i - m_shift), tl.math.exp2(scores - m_shift[:, None])


@triton.jit
def _prefix_tile(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, valid_ptr,
                 offs_m, start_n, offs_n_base, offs_d, d_in, prefix_len, window, qk_scale,
                 CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    offs_n = start_n + offs_n_base
    key_in = offs_n < prefix_len
    k = load_rows(k_base, offs_n, stride_kt, offs_d, key_in, d_in, UPCAST)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    valid_j = load_valid(valid_ptr, offs_n, key_in, HAS_PADDING)
    visible = prefix_visible(offs_m[:, None], offs_n[None, :], valid_j[None, :], prefix_len, window,
                             CAUSAL, HAS_PADDING, HAS_WINDOW)
    scores = tl.where(visible, scores, float("-inf"))
    m_new, alpha, p = _online_softmax_update(m_i, scores)
    v = load_rows(v_base, offs_n, stride_vt, offs_d, key_in, d_in, UPCAST)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, l_i * alpha + tl.sum(p, 1), m_new


@triton.jit
def thought_attention_fwd_kernel(
    Q, K, V, O, LSE, VALID,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    stride_valid_b,
    num_q_heads, group_size, prefix_len, num_query_steps, first_query_step, head_dim, window, sm_scale,
    HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    block_start, batch, head, pid_t = block_program(prefix_len, num_q_heads, BLOCK_M, True)
    step = first_query_step + pid_t
    kv_head = head // group_size
    offs_m = block_start + tl.arange(0, BLOCK_M)
    offs_n_base = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_in = offs_m < prefix_len
    d_in = offs_d < head_dim
    qk_scale = sm_scale * LOG2E  # scores in log2 units

    q_base = Q + head_offset(batch, head, stride_qb, stride_qh)
    k_base = K + head_offset(batch, kv_head, stride_kb, stride_kh)
    v_base = V + head_offset(batch, kv_head, stride_vb, stride_vh)
    valid_ptr = VALID + batch.to(tl.int64) * stride_valid_b
    q_rows = pid_t * prefix_len + offs_m
    q = load_rows(q_base, q_rows, stride_qt, offs_d, row_in, d_in, UPCAST)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # 1. Own stream keys (s, i), s = 1..step: one dot product per row and step.
    row_valid = load_valid(valid_ptr, offs_m, row_in, HAS_PADDING)
    for s in range(1, step + 1):
        stream_rows = s * prefix_len + offs_m
        # Products in fp32 without holding fp32 copies of q/k/v tiles: keeps register pressure near the prefix loop's.
        ks = load_rows(k_base, stream_rows, stride_kt, offs_d, row_in, d_in, UPCAST)
        scores = tl.sum(q.to(tl.float32) * ks.to(tl.float32), 1) * qk_scale
        scores = tl.where(row_valid, scores, float("-inf"))[:, None]
        m_i_new, alpha, p = _online_softmax_update(m_i, scores)
        vs = load_rows(v_base, stream_rows, stride_vt, offs_d, row_in, d_in, UPCAST)
        acc = acc * alpha[:, None] + p * vs.to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_i_new

    # 2. Prefix keys: tiles below the diagonal without the causal test, then the diagonal tiles with it.
    lo, diagonal_start, hi = prefix_key_range(block_start, prefix_len, window, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(lo, diagonal_start, BLOCK_N):
        acc, l_i, m_i = _prefix_tile(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, valid_ptr,
                                     offs_m, start_n, offs_n_base, offs_d, d_in, prefix_len, window, qk_scale,
                                     False, HAS_PADDING, HAS_WINDOW, UPCAST, DOT_PRECISION)
    for start_n in range(diagonal_start, hi, BLOCK_N):
        acc, l_i, m_i = _prefix_tile(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, valid_ptr,
                                     offs_m, start_n, offs_n_base, offs_d, d_in, prefix_len, window, qk_scale,
                                     True, HAS_PADDING, HAS_WINDOW, UPCAST, DOT_PRECISION)

    seen = l_i != 0.0  # a NaN sum (NaN input) counts as seen, so the NaN reaches o and lse
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    o_base = O + head_offset(batch, head, stride_ob, stride_oh)
    store_rows(o_base, q_rows, stride_ot, offs_d, row_in, d_in, out)
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * LN2, float("-inf"))
    lse_ptrs = LSE + (batch * num_q_heads + head).to(tl.int64) * num_query_steps * prefix_len + q_rows
    tl.store(lse_ptrs, lse, mask=row_in)
