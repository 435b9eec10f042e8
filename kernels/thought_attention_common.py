"""Device helpers shared by the thought-attention kernels.

Mask predicate (defined in ``quietstar_fast.mask``): prefix key j is visible to position i iff j <= i, j is a real
token and i - j < W; the own-stream keys of position i are visible iff i is a real token.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def block_program(length, num_heads, BLOCK: tl.constexpr, LATE_BLOCKS_FIRST: tl.constexpr):
    """Decode a (blocks * batch * heads, steps) grid -> (first row of the block, batch, head, step index).

    Blocks vary fastest so that neighbouring programs share K/V in L2, and batch*heads never meets the 65535 limit
    of the grid's y/z axes. LATE_BLOCKS_FIRST launches the last blocks first: in causal query kernels they see the
    most keys, and starting the longest programs first shortens the tail.
    """
    num_blocks = tl.cdiv(length, BLOCK)
    pid_bh = tl.program_id(0) // num_blocks
    block_index = tl.program_id(0) % num_blocks
    if LATE_BLOCKS_FIRST:
        block_index = num_blocks - 1 - block_index
    return block_index * BLOCK, pid_bh // num_heads, pid_bh % num_heads, tl.program_id(1)


@triton.jit
def prefix_key_range(block_start, prefix_len, window, HAS_WINDOW: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Prefix key tiles a query block can see: [lo, diagonal_start) lie below the diagonal for every row of the
    block (no causal test needed), [diagonal_start, hi) cross it."""
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(block_start - window + 1, 0) // BLOCK_N * BLOCK_N
    return lo, block_start // BLOCK_N * BLOCK_N, tl.minimum(block_start + BLOCK_M, prefix_len)


@triton.jit
def prefix_visible(offs_i, offs_j, valid_j, prefix_len, window,
                   CAUSAL: tl.constexpr, HAS_PADDING: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Bool tile from broadcastable position indices; CAUSAL=False skips the j <= i / j < n tests on tiles known
    to lie strictly below the diagonal."""
    visible = offs_j >= 0
    if CAUSAL:
        visible = visible & (offs_j <= offs_i) & (offs_j < prefix_len)
    if HAS_WINDOW:
        visible = visible & (offs_i - offs_j < window)
    if HAS_PADDING:
        visible = visible & valid_j
    return visible


@triton.jit
def load_rows(base, rows, stride_row, offs_d, row_mask, d_mask, UPCAST: tl.constexpr):
    """Load a (rows, BLOCK_D) tile with 64-bit row offsets; zeros outside the masks."""
    ptrs = base + rows.to(tl.int64)[:, None] * stride_row + offs_d[None, :]
    tile = tl.load(ptrs, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    if UPCAST:
        # Triton's CPU interpreter computes bf16 arithmetic on raw bits; work in fp32 there.
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def store_rows(base, rows, stride_row, offs_d, row_mask, d_mask, tile):
    ptrs = base + rows.to(tl.int64)[:, None] * stride_row + offs_d[None, :]
    tl.store(ptrs, tile.to(base.dtype.element_ty), mask=row_mask[:, None] & d_mask[None, :])


@triton.jit
def load_valid(valid_ptr, offs, in_range, HAS_PADDING: tl.constexpr):
    """Key/row validity flags (int8, 1 = real token); all True without padding."""
    if HAS_PADDING:
        return tl.load(valid_ptr + offs, mask=in_range, other=0) != 0
    return in_range


@triton.jit
def head_offset(batch, head, stride_b, stride_h):
    """64-bit element offset of (batch, head): products of sizes can pass 2**31."""
    return batch.to(tl.int64) * stride_b + head.to(tl.int64) * stride_h


@triton.jit
def load_row_stats(lse_ptr, delta_ptr, rows, row_in):
    """LSE in log2 units (+inf for rows that see no key, so their probabilities recompute as 0) and delta."""
    lse = tl.load(lse_ptr + rows, mask=row_in, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    delta = tl.load(delta_ptr + rows, mask=row_in, other=0.0)
    return lse2, delta
