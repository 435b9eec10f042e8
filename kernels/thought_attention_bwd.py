"""Backward kernels of thought-aware attention, recomputing probabilities from the forward's LSE.

* ``preprocess``: delta = rowsum(dO * O) - dLSE (the dLSE term makes the LSE output differentiable).
* ``dq``: one program per (position block, batch*query head, query step); prefix tiles as in the forward, then the
  own stream keys as row-wise dot products.
* ``prefix_dkdv``: one program per (prefix key block, batch*kv head); it loops over the heads of its GQA group,
  every query step and the query blocks that see the keys, accumulating in registers: no atomics, deterministic.
* ``stream_dkdv``: one program per (position block, batch*kv head, stream step s); stream key (s, i) is seen only
  by position i at steps >= s, so its gradient is a sum of row-wise products over the group's heads and steps.
"""
import triton
import triton.language as tl

from .thought_attention_common import (
    LOG2E,
    block_program,
    head_offset,
    load_row_stats,
    load_rows,
    load_valid,
    prefix_key_range,
    prefix_visible,
    store_rows,
)


@triton.jit
def thought_attention_bwd_preprocess_kernel(
    O, DO, DLSE, DELTA,
    stride_ob, stride_oh, stride_ot,
    stride_dob, stride_doh, stride_dot,
    num_q_heads, num_rows, head_dim,
    HAS_DLSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    block_start, batch, head, _ = block_program(num_rows, num_q_heads, BLOCK_M, False)
    rows = block_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_in = rows < num_rows
    d_in = offs_d < head_dim
    o = load_rows(O + head_offset(batch, head, stride_ob, stride_oh), rows, stride_ot, offs_d, row_in, d_in, True)
    do = load_rows(DO + head_offset(batch, head, stride_dob, stride_doh), rows, stride_dot, offs_d, row_in, d_in,
                   True)
    delta = tl.sum(o * do, 1)
    stat_rows = (batch * num_q_heads + head).to(tl.int64) * num_rows + rows
    if HAS_DLSE:
        delta -= tl.load(DLSE + stat_rows, mask=row_in, other=0.0)
    tl.store(DELTA + stat_rows, delta, mask=row_in)


@triton.jit
def _dq_prefix_tile(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, valid_ptr,
                    offs_m, start_n, offs_n_base, offs_d, d_in, prefix_len, window, qk_scale,
                    CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr,
                    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    offs_n = start_n + offs_n_base
    key_in = offs_n < prefix_len
    k = load_rows(k_base, offs_n, stride_kt, offs_d, key_in, d_in, UPCAST)
    v = load_rows(v_base, offs_n, stride_vt, offs_d, key_in, d_in, UPCAST)
    valid_j = load_valid(valid_ptr, offs_n, key_in, HAS_PADDING)
    visible = prefix_visible(offs_m[:, None], offs_n[None, :], valid_j[None, :], prefix_len, window,
                             CAUSAL, HAS_PADDING, HAS_WINDOW)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    p = tl.where(visible, tl.math.exp2(scores - lse2[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)


@triton.jit
def thought_attention_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, VALID,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
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
    qk_scale = sm_scale * LOG2E

    k_base = K + head_offset(batch, kv_head, stride_kb, stride_kh)
    v_base = V + head_offset(batch, kv_head, stride_vb, stride_vh)
    valid_ptr = VALID + batch.to(tl.int64) * stride_valid_b
    q_rows = pid_t * prefix_len + offs_m
    q = load_rows(Q + head_offset(batch, head, stride_qb, stride_qh), q_rows, stride_qt, offs_d, row_in, d_in, UPCAST)
    do = load_rows(DO + head_offset(batch, head, stride_dob, stride_doh), q_rows, stride_dot, offs_d, row_in, d_in,
                   UPCAST)
    stat_offset = (batch * num_q_heads + head).to(tl.int64) * num_query_steps * prefix_len
    lse2, delta = load_row_stats(LSE + stat_offset, DELTA + stat_offset, q_rows, row_in)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, diagonal_start, hi = prefix_key_range(block_start, prefix_len, window, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(lo, diagonal_start, BLOCK_N):
        dq = _dq_prefix_tile(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, valid_ptr,
                             offs_m, start_n, offs_n_base, offs_d, d_in, prefix_len, window, qk_scale,
                             False, HAS_PADDING, HAS_WINDOW, UPCAST, DOT_PRECISION)
    for start_n in range(diagonal_start, hi, BLOCK_N):
        dq = _dq_prefix_tile(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, valid_ptr,
                             offs_m, start_n, offs_n_base, offs_d, d_in, prefix_len, window, qk_scale,
                             True, HAS_PADDING, HAS_WINDOW, UPCAST, DOT_PRECISION)

    row_valid = load_valid(valid_ptr, offs_m, row_in, HAS_PADDING)
    q_f32 = q.to(tl.float32)
    do_f32 = do.to(tl.float32)
    for s in range(1, step + 1):
        stream_rows = s * prefix_len + offs_m
        ks = load_rows(k_base, stream_rows, stride_kt, offs_d, row_in, d_in, UPCAST).to(tl.float32)
        vs = load_rows(v_base, stream_rows, stride_vt, offs_d, row_in, d_in, UPCAST).to(tl.float32)
        p = tl.where(row_valid, tl.math.exp2(tl.sum(q_f32 * ks, 1) * qk_scale - lse2), 0.0)
        ds = p * (tl.sum(do_f32 * vs, 1) - delta)
        dq += ds[:, None] * ks

    store_rows(DQ + head_offset(batch, head, stride_dqb, stride_dqh), q_rows, stride_dqt, offs_d, row_in, d_in,
               dq * sm_scale)


@triton.jit
def _dkdv_query_tile(dk, dv, k, v, valid_j, offs_n, q_base, do_base, stride_qt, stride_dot, lse_ptr, delta_ptr,
                     step_row_offset, start_m, offs_m_base, offs_d, d_in, prefix_len, window, qk_scale,
                     CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr,
                     UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    offs_m = start_m + offs_m_base
    row_in = offs_m < prefix_len
    rows = step_row_offset + offs_m
    q = load_rows(q_base, rows, stride_qt, offs_d, row_in, d_in, UPCAST)
    do = load_rows(do_base, rows, stride_dot, offs_d, row_in, d_in, UPCAST)
    lse2, delta = load_row_stats(lse_ptr, delta_ptr, rows, row_in)
    # Transposed tiles (keys x queries), so dK/dV accumulate with plain dots.
    scores_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
    visible = prefix_visible(offs_m[None, :], offs_n[:, None], valid_j[:, None], prefix_len, window,
                             CAUSAL, HAS_PADDING, HAS_WINDOW)
    p_t = tl.where(visible, tl.math.exp2(scores_t - lse2[None, :]), 0.0)
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def thought_attention_bwd_prefix_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, VALID,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt,
    stride_valid_b,
    num_kv_heads, group_size, prefix_len, num_query_steps, head_dim, window, sm_scale,
    HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    start_n, batch, kv_head, _ = block_program(prefix_len, num_kv_heads, BLOCK_N, False)
    num_q_heads = num_kv_heads * group_size
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m_base = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    key_in = offs_n < prefix_len
    d_in = offs_d < head_dim
    qk_scale = sm_scale * LOG2E

    k = load_rows(K + head_offset(batch, kv_head, stride_kb, stride_kh), offs_n, stride_kt, offs_d, key_in, d_in,
                  UPCAST)
    v = load_rows(V + head_offset(batch, kv_head, stride_vb, stride_vh), offs_n, stride_vt, offs_d, key_in, d_in,
                  UPCAST)
    valid_ptr = VALID + batch.to(tl.int64) * stride_valid_b
    valid_j = load_valid(valid_ptr, offs_n, key_in, HAS_PADDING)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Query blocks that can see this key block: from the one holding the diagonal up to the window's end.
    diagonal_start = start_n // BLOCK_M * BLOCK_M
    q_hi = prefix_len
    if HAS_WINDOW:
        q_hi = tl.minimum(prefix_len, start_n + BLOCK_N - 1 + window)
    # Blocks starting at or after start_n + BLOCK_N lie wholly below the diagonal.
    below_start = diagonal_start + tl.cdiv(start_n + BLOCK_N - diagonal_start, BLOCK_M) * BLOCK_M
    for hh in range(group_size):
        head = kv_head * group_size + hh
        q_base = Q + head_offset(batch, head, stride_qb, stride_qh)
        do_base = DO + head_offset(batch, head, stride_dob, stride_doh)
        stat_offset = (batch * num_q_heads + head).to(tl.int64) * num_query_steps * prefix_len
        for t in range(num_query_steps):
            step_row_offset = t * prefix_len
            for start_m in range(diagonal_start, tl.minimum(below_start, q_hi), BLOCK_M):
                dk, dv = _dkdv_query_tile(dk, dv, k, v, valid_j, offs_n, q_base, do_base, stride_qt, stride_dot,
                                          LSE + stat_offset, DELTA + stat_offset, step_row_offset, start_m,
                                          offs_m_base, offs_d, d_in, prefix_len, window, qk_scale,
                                          True, HAS_PADDING, HAS_WINDOW, UPCAST, DOT_PRECISION)
            for start_m in range(below_start, q_hi, BLOCK_M):
                dk, dv = _dkdv_query_tile(dk, dv, k, v, valid_j, offs_n, q_base, do_base, stride_qt, stride_dot,
                                          LSE + stat_offset, DELTA + stat_offset, step_row_offset, start_m,
                                          offs_m_base, offs_d, d_in, prefix_len, window, qk_scale,
                                          False, HAS_PADDING, HAS_WINDOW, UPCAST, DOT_PRECISION)

    store_rows(DK + head_offset(batch, kv_head, stride_dkb, stride_dkh), offs_n, stride_dkt, offs_d, key_in, d_in,
               dk * sm_scale)
    store_rows(DV + head_offset(batch, kv_head, stride_dkb, stride_dkh), offs_n, stride_dkt, offs_d, key_in, d_in,
               dv)


@triton.jit
def thought_attention_bwd_stream_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, VALID,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt,
    stride_valid_b,
    num_kv_heads, group_size, prefix_len, num_query_steps, first_query_step, head_dim, sm_scale,
    HAS_PADDING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):
    block_start, batch, kv_head, stream_index = block_program(prefix_len, num_kv_heads, BLOCK_M, False)
    stream_step = stream_index + 1
    num_q_heads = num_kv_heads * group_size
    offs_m = block_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_in = offs_m < prefix_len
    d_in = offs_d < head_dim
    qk_scale = sm_scale * LOG2E
    stream_rows = stream_step * prefix_len + offs_m

    ks = load_rows(K + head_offset(batch, kv_head, stride_kb, stride_kh), stream_rows, stride_kt, offs_d, row_in,
                   d_in, UPCAST).to(tl.float32)
    vs = load_rows(V + head_offset(batch, kv_head, stride_vb, stride_vh), stream_rows, stride_vt, offs_d, row_in,
                   d_in, UPCAST).to(tl.float32)
    row_valid = load_valid(VALID + batch.to(tl.int64) * stride_valid_b, offs_m, row_in, HAS_PADDING)
    dk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Query steps r >= stream_step see this key; they are the call's steps t >= stream_step - first_query_step.
    first_t = tl.maximum(stream_step - first_query_step, 0)
    for hh in range(group_size):
        head = kv_head * group_size + hh
        q_base = Q + head_offset(batch, head, stride_qb, stride_qh)
        do_base = DO + head_offset(batch, head, stride_dob, stride_doh)
        stat_offset = (batch * num_q_heads + head).to(tl.int64) * num_query_steps * prefix_len
        for t in range(first_t, num_query_steps):
            rows = t * prefix_len + offs_m
            q = load_rows(q_base, rows, stride_qt, offs_d, row_in, d_in, UPCAST).to(tl.float32)
            do = load_rows(do_base, rows, stride_dot, offs_d, row_in, d_in, UPCAST).to(tl.float32)
            lse2, delta = load_row_stats(LSE + stat_offset, DELTA + stat_offset, rows, row_in)
            p = tl.where(row_valid, tl.math.exp2(tl.sum(q * ks, 1) * qk_scale - lse2), 0.0)
            ds = p * (tl.sum(do * vs, 1) - delta)
            dk += ds[:, None] * q
            dv += p[:, None] * do

    store_rows(DK + head_offset(batch, kv_head, stride_dkb, stride_dkh), stream_rows, stride_dkt, offs_d, row_in,
               d_in, dk * sm_scale)
    store_rows(DV + head_offset(batch, kv_head, stride_dkb, stride_dkh), stream_rows, stride_dkt, offs_d, row_in,
               d_in, dv)
