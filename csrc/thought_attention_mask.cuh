// The parallel-thought mask on the device. Its definition lives in quietstar_fast/mask.py; this is the same
// predicate: prefix key j is visible to position i iff j <= i, j is a real token and i - j < W; the own-stream
// keys (s, i) are visible iff i is a real token.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "common.cuh"
#include "launch.h"

namespace quietstar {

struct ThoughtMask {
  const int8_t* key_valid;  // this batch row's (n,) flags, or null
  int prefix_len;
  int window;  // 0 = none

  __device__ __forceinline__ bool real(int position) const {
    return position < prefix_len && (key_valid == nullptr || key_valid[position] != 0);
  }
  __device__ __forceinline__ bool prefix_visible(int i, int j) const {
    return j <= i && real(j) && (window == 0 || i - j < window);
  }
  // Whether queries [row_start, row_start + rows) all see keys [key_start, key_start + keys): a tile wholly below
  // the diagonal, inside the window and the sequence, with no padding; only other tiles evaluate the mask.
  __device__ __forceinline__ bool sees_whole_tile(int row_start, int rows, int key_start, int keys) const {
    return key_valid == nullptr && key_start + keys - 1 <= row_start && row_start + rows <= prefix_len &&
           (window == 0 || row_start + rows - 1 - key_start < window);
  }
  // Prefix key tiles [first, end) a block of queries [row_start, row_end) may see.
  __device__ __forceinline__ int first_key(int row_start, int block_n) const {
    return window == 0 ? 0 : max(row_start - window + 1, 0) / block_n * block_n;
  }
};

__device__ __forceinline__ ThoughtMask make_mask(const ThoughtAttentionArgs& args, int batch) {
  const int8_t* valid = args.key_valid == nullptr ? nullptr : args.key_valid + int64_t(batch) * args.key_valid_stride;
  return ThoughtMask{valid, args.prefix_len, args.window};
}

// What a block of the query-side kernels (forward, dQ) works on: grid (blocks * batch * q heads, query steps).
struct QueryBlock {
  int block_start;  // first query position of the block
  int rows_in;      // positions of the block inside the prefix
  int batch, head, kv_head;
  int query_step;   // index into q's m steps
  int step;         // the thought step those queries belong to
  int64_t first_row;  // q row of the block's first query

  // Last blocks first: in a causal pattern they see the most keys, and starting them early shortens the tail.
  __device__ static QueryBlock decode(const ThoughtAttentionArgs& args, int block_m) {
    const int n = args.prefix_len;
    const int num_blocks = (n + block_m - 1) / block_m;
    QueryBlock block;
    block.block_start = (num_blocks - 1 - int(blockIdx.x % num_blocks)) * block_m;
    block.rows_in = min(block_m, n - block.block_start);
    const int batch_head = blockIdx.x / num_blocks;
    block.batch = batch_head / args.num_q_heads;
    block.head = batch_head % args.num_q_heads;
    block.kv_head = block.head / (args.num_q_heads / args.num_kv_heads);
    block.query_step = blockIdx.y;
    block.step = args.num_stream_steps + 1 - args.num_query_steps + block.query_step;
    block.first_row = int64_t(block.query_step) * n + block.block_start;
    return block;
  }
};

// Base pointer of (batch, head) in an operand, with 64-bit offsets.
template <typename T>
__device__ __forceinline__ T* head_base(const Operand& x, int batch, int head) {
  return static_cast<T*>(x.data) + int64_t(batch) * x.stride_batch + int64_t(head) * x.stride_head;
}

// Loads tokens [first_token, first_token + rows_in) of an operand's (batch, head) slice at `head` into a ROWS x D
// tile (head_dim columns; the rest zero).
template <typename T, int ROWS, int D>
__device__ __forceinline__ void load_tokens(T* tile, int ld, const T* head, const Operand& x, int64_t first_token,
                                            int rows_in, int head_dim) {
  load_tile<T, ROWS, D>(tile, ld, head + first_token * x.stride_token, x.stride_token, rows_in, head_dim);
}

// Whether the tensor-core kernels can take these operands: 16-bit, head dim a multiple of 8 and every operand
// 16-byte aligned in all its strides (cp.async copies whole 16-byte chunks). The rest take the FMA kernels.
inline bool aligned_for_cp_async(const Operand& x) {
  return reinterpret_cast<uintptr_t>(x.data) % 16 == 0 && x.stride_batch % 8 == 0 && x.stride_head % 8 == 0 &&
         x.stride_token % 8 == 0;
}

inline bool tensor_core_layout(const ThoughtAttentionArgs& args, bool backward) {
  if (args.kind == ScalarKind::kFloat32 || args.head_dim % 8 != 0) return false;
  for (const Operand* x : {&args.q, &args.k, &args.v}) {
    if (!aligned_for_cp_async(*x)) return false;
  }
  // The forward writes o in 4-byte pairs; the backward reads o only in the preprocess, and writes the gradients.
  const std::initializer_list<const Operand*> outputs = {&args.o};
  const std::initializer_list<const Operand*> backward_operands = {&args.grad_o, &args.grad_q, &args.grad_k,
                                                                   &args.grad_v};
  for (const Operand* x : backward ? backward_operands : outputs) {
    if (!aligned_for_cp_async(*x)) return false;
  }
  return true;
}

// A row's LSE in the form the backward's recomputation wants: log2 units, +inf for rows that see no key, so their
// probabilities come out 0.
__device__ __forceinline__ float lse_log2(float lse) { return lse == -INFINITY ? INFINITY : lse * kLog2e; }

// Row index of (batch, head, query row) in the (B, Hq, m * n) statistics.
__device__ __forceinline__ int64_t stat_index(const ThoughtAttentionArgs& args, int batch, int head, int row) {
  return (int64_t(batch) * args.num_q_heads + head) * (int64_t(args.num_query_steps) * args.prefix_len) + row;
}

}  // namespace quietstar
