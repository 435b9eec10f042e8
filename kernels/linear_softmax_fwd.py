"""Forward kernel of the fused LM-head losses: log-softmax statistics of z = H @ W^T without writing z to memory.

One program per (block of rows, slice of the vocabulary). It computes its logit tiles with a K-loop of dots over
the hidden dim and keeps, per row, an online max / sum of exp(z * inv_t) (the log-sum-exp at temperature
1/inv_t), plus
  - the target's logit (cross-entropy mode), or
  - the running Gumbel-max sample argmax(z * sample_scale + g) and the logit it picked (sampling mode), the noise
    g read from a tensor or drawn in-kernel from Philox (never stored), seeded from a device tensor so that drawing
    the seed never waits for the GPU.
Partial results per slice are merged by the launcher (a few floats per row). Banned ids (e.g. the thought
delimiters when sampling) get the logit -1e10 like the official code: never sampled, no probability, no gradient.
"""
import triton
import triton.language as tl

from .linear_softmax_common import logit_tile


@triton.jit
def linear_softmax_fwd_kernel(
    H, W, TARGETS, NOISE, SEED, BANNED,
    PART_MAX, PART_SUM, PART_PICK, PART_BEST, PART_INDEX,
    num_rows, vocab, hidden, stride_h, stride_w, stride_noise, vocab_per_split,
    inv_t, sample_scale,
    SAMPLE: tl.constexpr, NOISE_FROM_SEED: tl.constexpr, HAS_BANNED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_in = rows < num_rows
    v_lo = split * vocab_per_split
    v_hi = tl.minimum(vocab, v_lo + vocab_per_split)

    run_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    picked = tl.zeros([BLOCK_M], dtype=tl.float32)  # logit of the target / of the current sample
    best = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    best_index = tl.zeros([BLOCK_M], dtype=tl.int32)
    if not SAMPLE:
        targets = tl.load(TARGETS + rows, mask=row_in, other=-1)

    for v0 in range(v_lo, v_hi, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        v_in = offs_v < v_hi
        z = logit_tile(H, W, BANNED, rows, row_in, offs_v, v_in, hidden, stride_h, stride_w, HAS_BANNED,
                       BLOCK_M, BLOCK_V, BLOCK_K, UPCAST, DOT_PRECISION)
        scaled = tl.where(v_in[None, :], z * inv_t, float("-inf"))
        tile_max = tl.maximum(run_max, tl.max(scaled, 1))
        run_sum = run_sum * tl.exp(run_max - tile_max) + tl.sum(tl.exp(scaled - tile_max[:, None]), 1)
        run_max = tile_max
        if SAMPLE:
            if NOISE_FROM_SEED:
                offsets = rows.to(tl.int64)[:, None] * vocab + offs_v[None, :]
                uniform = tl.rand(tl.load(SEED), offsets)
                # Gumbel(0, 1) = -log(Exp(1)), as torch's gumbel_softmax draws it.
                noise = -tl.log(-tl.log(uniform))
            else:
                noise_ptrs = NOISE + rows.to(tl.int64)[:, None] * stride_noise + offs_v[None, :]
                noise = tl.load(noise_ptrs, mask=row_in[:, None] & v_in[None, :], other=0.0).to(tl.float32)
            score = tl.where(v_in[None, :], z * sample_scale + noise, float("-inf"))
            tile_best, tile_index = tl.max(score, 1, return_indices=True, return_indices_tie_break_left=True)
            tile_pick = tl.sum(tl.where(tl.arange(0, BLOCK_V)[None, :] == tile_index[:, None], z, 0.0), 1)
            better = tile_best > best  # strict: ties keep the earlier (lower) id, as torch.argmax does
            best = tl.where(better, tile_best, best)
            best_index = tl.where(better, v0 + tile_index, best_index)
            picked = tl.where(better, tile_pick, picked)
        else:
            picked += tl.sum(tl.where(offs_v[None, :] == targets[:, None], z, 0.0), 1)

    part = rows.to(tl.int64) * num_splits + split
    tl.store(PART_MAX + part, run_max, mask=row_in)
    tl.store(PART_SUM + part, run_sum, mask=row_in)
    tl.store(PART_PICK + part, picked, mask=row_in)
    if SAMPLE:
        tl.store(PART_BEST + part, best, mask=row_in)
        tl.store(PART_INDEX + part, best_index, mask=row_in)
