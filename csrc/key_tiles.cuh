// The key tiles a query block of the tensor-core forward and dQ kernels walks, and their two-stage cp.async
// pipeline: the block's own-stream steps first (step s is the contiguous k/v rows s * n + block_start ..., one key
// per query row), then the prefix tiles from the first one the block can see up to the diagonal.
#pragma once

#include <cstdint>

#include "async_tile.cuh"
#include "thought_attention_mask.cuh"

namespace quietstar {

struct KeyTile {
  bool stream;
  int64_t first_token;  // row of k/v within the batch and head
  int start;            // prefix tiles: the first key position
  int rows_in;
};

// KvTile holds BLOCK_M rows (a stream tile) and prefix tiles of BLOCK_N <= BLOCK_M keys; the stages (K then V,
// twice) start at `stages`.
template <typename T, typename KvTile, int BLOCK_M, int BLOCK_N>
struct KeyTiles {
  static_assert(BLOCK_N <= BLOCK_M && KvTile::kRows == BLOCK_M, "a stage holds a whole stream tile");
  using Tile = KvTile;
  static constexpr int64_t kBytes = 4 * KvTile::kBytes;

  char* stages;
  const T* k_base;
  const T* v_base;
  int64_t k_stride, v_stride;
  int n, head_dim, step, block_start, rows_in;
  int first_key;
  int count;

  __device__ KeyTiles(const ThoughtAttentionArgs& args, const QueryBlock& block, const ThoughtMask& mask,
                      char* stages_)
      : stages(stages_),
        k_base(head_base<const T>(args.k, block.batch, block.kv_head)),
        v_base(head_base<const T>(args.v, block.batch, block.kv_head)),
        k_stride(args.k.stride_token), v_stride(args.v.stride_token),
        n(args.prefix_len), head_dim(args.head_dim), step(block.step), block_start(block.block_start),
        rows_in(block.rows_in), first_key(mask.first_key(block.block_start, BLOCK_N)),
        count(block.step + ceil_div(min(block.block_start + BLOCK_M, args.prefix_len) - first_key, BLOCK_N)) {}

  __device__ KeyTile tile(int index) const {
    if (index < step) return KeyTile{true, int64_t(index + 1) * n + block_start, block_start, rows_in};
    const int start = first_key + (index - step) * BLOCK_N;
    return KeyTile{false, start, start, min(BLOCK_N, n - start)};
  }
  __device__ T* k(int index) const { return reinterpret_cast<T*>(stages + (index % 2) * 2 * KvTile::kBytes); }
  __device__ T* v(int index) const { return k(index) + KvTile::kBytes / int64_t(sizeof(T)); }

  // Issues the cp.async copies of tile `index` into its stage (the caller commits).
  __device__ void load(int index) const {
    const KeyTile key = tile(index);
    const int rows = key.stream ? BLOCK_M : BLOCK_N;
    cp_async_tile<KvTile>(k(index), k_base + key.first_token * k_stride, k_stride, key.rows_in, head_dim, rows);
    cp_async_tile<KvTile>(v(index), v_base + key.first_token * v_stride, v_stride, key.rows_in, head_dim, rows);
  }
};

}  // namespace quietstar
