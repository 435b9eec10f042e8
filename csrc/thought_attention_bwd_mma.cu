// Backward kernels of thought-aware attention on tensor cores, in the FlashAttention-2 design (see
// thought_attention_bwd.cu for the whole backward). Probabilities are recomputed from the LSE in registers;
// dS is rounded to 16 bits in registers and fed to the next mma as its A operand. dQ has its own pass (no atomics),
// so the backward is deterministic.
//
//   dq            one block of four warps per (64 queries, batch * query head, query step), Q and dO as register
//                 fragments; key tiles of 32 (its own-stream steps as contiguous row tiles, then the prefix tiles)
//                 double-buffered with cp.async; S = Q K^T, dP = dO V^T, dQ += dS K, dQ in registers.
//   prefix dk/dv  one block per (64 prefix keys, batch * kv head), each warp 16 keys; query tiles of 32 (every query
//                 head of the group, every query step, the blocks at or below the diagonal and inside the window)
//                 double-buffered with cp.async; S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q, dK and dV
//                 in registers.
//   stream dk/dv  one block per (64 consecutive positions, stream step s, batch * kv head): keys (s, i) and their
//                 only queries, position i's own at steps r >= s, are contiguous row tiles (the query tiles for every
//                 head of the group and step double-buffered with cp.async); the work is row-wise, in the fragment
//                 layout, with dK and dV in registers.
#include "async_tile.cuh"
#include "fragment_rows.cuh"
#include "key_tiles.cuh"
#include "launch_utils.cuh"
#include "thought_attention_mask.cuh"
#include "warp_mma.cuh"

namespace quietstar {
namespace {

template <typename T, int D>
struct TensorCoreDq {
  static constexpr int kBlockM = 64;
  static constexpr int kBlockN = 32;
  using QTile = PaddedTile<T, kBlockM, D>;  // q, then grad_o
  // A stream tile holds one key per query row (kBlockM rows); prefix tiles fill the first kBlockN.
  using Keys = KeyTiles<T, PaddedTile<T, kBlockM, D>, kBlockM, kBlockN>;
  static constexpr int64_t kBytes = 2 * QTile::kBytes + Keys::kBytes;
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 2) thought_attention_bwd_dq_mma_kernel(const ThoughtAttentionArgs args) {
  using Layout = TensorCoreDq<T, D>;
  using QTile = typename Layout::QTile;
  using KvTile = typename Layout::Keys::Tile;
  constexpr int BM = Layout::kBlockM;
  constexpr int BN = Layout::kBlockN;
  QUIETSTAR_DYNAMIC_SMEM(smem);
  T* q_tile = reinterpret_cast<T*>(smem);
  T* grad_o_tile = q_tile + QTile::kBytes / 2;

  const QueryBlock block = QueryBlock::decode(args, BM);
  const int block_start = block.block_start, rows_in = block.rows_in;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const float scale_log2 = args.softmax_scale * kLog2e;
  const ThoughtMask mask = make_mask(args, block.batch);
  const typename Layout::Keys keys(args, block, mask, smem + 2 * QTile::kBytes);
  auto load_keys = [&](int index) { keys.load(index); };

  cp_async_tile<QTile>(q_tile, head_base<const T>(args.q, block.batch, block.head) +
                                   block.first_row * args.q.stride_token, args.q.stride_token, rows_in, args.head_dim);
  cp_async_tile<QTile>(grad_o_tile, head_base<const T>(args.grad_o, block.batch, block.head) +
                                        block.first_row * args.grad_o.stride_token, args.grad_o.stride_token, rows_in,
                       args.head_dim);
  keys.load(0);
  ptx::cp_async_commit();

  const int local_row[2] = {warp * 16 + g, warp * 16 + g + 8};
  bool row_real[2];
  float row_lse2[2], row_delta[2];  // rows past the end: +inf and 0, so their probabilities are 0
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const bool inside = local_row[h] < rows_in;
    row_real[h] = inside && mask.real(block_start + local_row[h]);
    const int64_t stat = stat_index(args, block.batch, block.head, int(block.first_row) + local_row[h]);
    row_lse2[h] = inside ? lse_log2(args.lse[stat]) : INFINITY;
    row_delta[h] = inside ? args.delta[stat] : 0.f;
  }
  uint32_t q_frag[D / 16][4], grad_o_frag[D / 16][4];
  float grad_q[D / 8][4] = {};

  for (int index = 0; index < keys.count; ++index) {
    next_pipeline_stage(index, keys.count, load_keys);
    if (index == 0) {
      load_a_fragments<QTile>(q_frag, q_tile, warp * 16, lane);
      load_a_fragments<QTile>(grad_o_frag, grad_o_tile, warp * 16, lane);
    }
    const T* k_tile = keys.k(index);
    const T* v_tile = keys.v(index);
    const KeyTile tile = keys.tile(index);

    if (tile.stream) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const T* key = k_tile + local_row[h] * KvTile::kLd;
        const T* value = v_tile + local_row[h] * KvTile::kLd;
        const float qk = ptx::quad_sum(fragment_row_dot<T, D>(q_frag, h, key, t));
        const float dp = ptx::quad_sum(fragment_row_dot<T, D>(grad_o_frag, h, value, t));
        if (!row_real[h]) continue;
        const float p = exp2f(qk * scale_log2 - row_lse2[h]);
        accumulate_row<T, D>(grad_q, h, p * (dp - row_delta[h]), key, t);
      }
    } else {
      float s[BN / 8][4] = {}, dp[BN / 8][4] = {};
      mma_n_major<KvTile>(s, q_frag, k_tile, lane);
      mma_n_major<KvTile>(dp, grad_o_frag, v_tile, lane);
      const bool needs_mask = !mask.sees_whole_tile(block_start, BM, tile.start, BN);
#pragma unroll
      for (int jt = 0; jt < BN / 8; ++jt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {  // dp becomes dS
          const int h = e / 2;
          const int key = tile.start + jt * 8 + 2 * t + e % 2;
          const bool visible = !needs_mask || (local_row[h] < rows_in &&
                                               mask.prefix_visible(block_start + local_row[h], key));
          const float p = visible ? exp2f(s[jt][e] * scale_log2 - row_lse2[h]) : 0.f;
          dp[jt][e] = p * (dp[jt][e] - row_delta[h]);
        }
      }
      uint32_t grad_s_frag[BN / 16][4];
      accumulator_a_fragments<T>(grad_s_frag, dp);
      mma_k_major<KvTile>(grad_q, grad_s_frag, k_tile, lane);
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

  T* grad_q_base = head_base<T>(args.grad_q, block.batch, block.head);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (local_row[h] >= rows_in) continue;
    store_row<T, D>(grad_q_base + (block.first_row + local_row[h]) * args.grad_q.stride_token, grad_q, h,
                    args.softmax_scale, args.head_dim, t);
  }
}

template <typename T, int D>
struct TensorCoreDkDv {
  static constexpr int kBlockN = 64;  // keys
  static constexpr int kBlockM = 32;  // queries per tile
  using KvTile = PaddedTile<T, kBlockN, D>;  // k, then v
  using QTile = PaddedTile<T, kBlockM, D>;   // per stage: q, then grad_o
  static constexpr int64_t kQOffset = 2 * KvTile::kBytes;
  static constexpr int64_t kBytes = 2 * KvTile::kBytes + 4 * QTile::kBytes;
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 2)
    thought_attention_bwd_prefix_dkdv_mma_kernel(const ThoughtAttentionArgs args) {
  using Layout = TensorCoreDkDv<T, D>;
  using KvTile = typename Layout::KvTile;
  using QTile = typename Layout::QTile;
  constexpr int BN = Layout::kBlockN;
  constexpr int BM = Layout::kBlockM;
  QUIETSTAR_DYNAMIC_SMEM(smem);
  T* k_tile = reinterpret_cast<T*>(smem);
  T* v_tile = k_tile + KvTile::kBytes / 2;
  auto q_stage = [&](int stage) { return reinterpret_cast<T*>(smem + Layout::kQOffset + 2 * stage * QTile::kBytes); };
  auto grad_o_stage = [&](int stage) { return q_stage(stage) + QTile::kBytes / 2; };

  const int n = args.prefix_len;
  const int num_key_blocks = ceil_div(n, BN);
  const int key_start = int(blockIdx.x % num_key_blocks) * BN;
  const int batch_head = blockIdx.x / num_key_blocks;
  const int batch = batch_head / args.num_kv_heads;
  const int kv_head = batch_head % args.num_kv_heads;
  const int group_size = args.num_q_heads / args.num_kv_heads;
  const int keys_in = min(BN, n - key_start);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const float scale_log2 = args.softmax_scale * kLog2e;
  const ThoughtMask mask = make_mask(args, batch);

  // Queries i >= j see key j; with a window only i < j + W, so the last key of the block bounds the range.
  const int query_begin = key_start / BM * BM;
  const int query_end = args.window == 0 ? n : min(n, key_start + keys_in - 1 + args.window);
  const int blocks_per_pass = ceil_div(query_end - query_begin, BM);
  const int num_tiles = group_size * args.num_query_steps * blocks_per_pass;
  struct QueryTile {
    int head, query_start, rows_in;
    int64_t first_row;
  };
  auto query_tile = [&](int index) {
    const int pass = index / blocks_per_pass;  // (group member, query step)
    const int query_start = query_begin + (index % blocks_per_pass) * BM;
    const int query_step = pass % args.num_query_steps;
    return QueryTile{kv_head * group_size + pass / args.num_query_steps, query_start, min(BM, n - query_start),
                     int64_t(query_step) * n + query_start};
  };
  auto load_query_tile = [&](int index) {
    const QueryTile tile = query_tile(index);
    cp_async_tile<QTile>(q_stage(index % 2), head_base<const T>(args.q, batch, tile.head) +
                                                 tile.first_row * args.q.stride_token, args.q.stride_token,
                         tile.rows_in, args.head_dim);
    cp_async_tile<QTile>(grad_o_stage(index % 2), head_base<const T>(args.grad_o, batch, tile.head) +
                                                      tile.first_row * args.grad_o.stride_token,
                         args.grad_o.stride_token, tile.rows_in, args.head_dim);
  };
  cp_async_tile<KvTile>(k_tile, head_base<const T>(args.k, batch, kv_head) + int64_t(key_start) * args.k.stride_token,
                        args.k.stride_token, keys_in, args.head_dim);
  cp_async_tile<KvTile>(v_tile, head_base<const T>(args.v, batch, kv_head) + int64_t(key_start) * args.v.stride_token,
                        args.v.stride_token, keys_in, args.head_dim);
  load_query_tile(0);
  ptx::cp_async_commit();

  const int key_row[2] = {warp * 16 + g, warp * 16 + g + 8};  // this lane's keys within the block
  float grad_k[D / 8][4] = {}, grad_v[D / 8][4] = {};

  for (int index = 0; index < num_tiles; ++index) {
    next_pipeline_stage(index, num_tiles, load_query_tile);
    const QueryTile tile = query_tile(index);
    const T* q_tile = q_stage(index % 2);
    const T* grad_o_tile = grad_o_stage(index % 2);
    // The statistics of this lane's query columns jt * 8 + 2t + c; queries past the end get +inf and 0.
    float column_lse2[BM / 8][2], column_delta[BM / 8][2];
#pragma unroll
    for (int jt = 0; jt < BM / 8; ++jt) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int column = jt * 8 + 2 * t + c;
        const int64_t stat = stat_index(args, batch, tile.head, int(tile.first_row) + column);
        column_lse2[jt][c] = column < tile.rows_in ? lse_log2(args.lse[stat]) : INFINITY;
        column_delta[jt][c] = column < tile.rows_in ? args.delta[stat] : 0.f;
      }
    }
    float s[BM / 8][4] = {}, dp[BM / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t k_frag[4], v_frag[4];
      ptx::ldmatrix_x4(k_frag, x4_a_order<KvTile>(k_tile, warp * 16, kk * 16, lane));
      ptx::ldmatrix_x4(v_frag, x4_a_order<KvTile>(v_tile, warp * 16, kk * 16, lane));
#pragma unroll
      for (int j = 0; j < BM / 16; ++j) {
        uint32_t b[4];
        ptx::ldmatrix_x4(b, x4_b_order<QTile>(q_tile, j * 16, kk * 16, lane));
        ptx::mma_m16n8k16<T>(s[2 * j], k_frag, {b[0], b[1]});
        ptx::mma_m16n8k16<T>(s[2 * j + 1], k_frag, {b[2], b[3]});
        ptx::ldmatrix_x4(b, x4_b_order<QTile>(grad_o_tile, j * 16, kk * 16, lane));
        ptx::mma_m16n8k16<T>(dp[2 * j], v_frag, {b[0], b[1]});
        ptx::mma_m16n8k16<T>(dp[2 * j + 1], v_frag, {b[2], b[3]});
      }
    }
    const bool needs_mask = !mask.sees_whole_tile(tile.query_start, BM, key_start, BN);
#pragma unroll
    for (int jt = 0; jt < BM / 8; ++jt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {  // s becomes P^T, dp becomes dS^T
        const int c = e % 2;
        const int column = jt * 8 + 2 * t + c;
        const bool visible = !needs_mask || (column < tile.rows_in &&
                                             mask.prefix_visible(tile.query_start + column, key_start + key_row[e / 2]));
        s[jt][e] = visible ? exp2f(s[jt][e] * scale_log2 - column_lse2[jt][c]) : 0.f;
        dp[jt][e] = s[jt][e] * (dp[jt][e] - column_delta[jt][c]);
      }
    }
    uint32_t p_frag[BM / 16][4], grad_s_frag[BM / 16][4];  // k = queries
    accumulator_a_fragments<T>(p_frag, s);
    accumulator_a_fragments<T>(grad_s_frag, dp);
    mma_k_major<QTile>(grad_v, p_frag, grad_o_tile, lane);
    mma_k_major<QTile>(grad_k, grad_s_frag, q_tile, lane);
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

  T* grad_k_base = head_base<T>(args.grad_k, batch, kv_head);
  T* grad_v_base = head_base<T>(args.grad_v, batch, kv_head);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (key_row[h] >= keys_in) continue;
    const int64_t token = int64_t(key_start + key_row[h]) * args.grad_k.stride_token;
    store_row<T, D>(grad_k_base + token, grad_k, h, args.softmax_scale, args.head_dim, t);
    store_row<T, D>(grad_v_base + token, grad_v, h, 1.f, args.head_dim, t);
  }
}

template <typename T, int D>
struct StreamDkDv {
  static constexpr int kBlockRows = 64;  // stream keys (s, i) of consecutive positions i
  using Tile = PaddedTile<T, kBlockRows, D>;
  // K, V, then per stage the matching query rows: q, grad_o.
  static constexpr int64_t kBytes = 6 * Tile::kBytes;
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 2)
    thought_attention_bwd_stream_dkdv_mma_kernel(const ThoughtAttentionArgs args) {
  using Layout = StreamDkDv<T, D>;
  using Tile = typename Layout::Tile;
  constexpr int BR = Layout::kBlockRows;
  constexpr int kTileElements = int(Tile::kBytes / 2);
  QUIETSTAR_DYNAMIC_SMEM(smem);
  T* k_tile = reinterpret_cast<T*>(smem);
  T* v_tile = k_tile + kTileElements;
  auto q_stage = [&](int stage) { return k_tile + (2 + 2 * stage) * kTileElements; };
  auto grad_o_stage = [&](int stage) { return q_stage(stage) + kTileElements; };

  const int n = args.prefix_len;
  const int num_blocks = ceil_div(n, BR);
  const int block_start = int(blockIdx.x % num_blocks) * BR;
  const int batch_head = blockIdx.x / num_blocks;
  const int batch = batch_head / args.num_kv_heads;
  const int kv_head = batch_head % args.num_kv_heads;
  const int group_size = args.num_q_heads / args.num_kv_heads;
  const int rows_in = min(BR, n - block_start);
  const int stream_step = 1 + blockIdx.y;
  const int first_query_step = args.num_stream_steps + 1 - args.num_query_steps;
  const int first_step = max(stream_step, first_query_step);  // key (s, i) is seen by i's queries at steps >= s
  const int steps_seen = args.num_stream_steps + 1 - first_step;
  const int num_tiles = group_size * max(steps_seen, 0);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int t = lane % 4;
  const float scale_log2 = args.softmax_scale * kLog2e;
  const ThoughtMask mask = make_mask(args, batch);
  const int64_t first_key_token = int64_t(stream_step) * n + block_start;

  // Tile `index`: the block's rows of query head kv_head * group_size + index / steps_seen at step
  // first_step + index % steps_seen, contiguous rows like the keys.
  auto query_head = [&](int index) { return kv_head * group_size + index / steps_seen; };
  auto first_query_row = [&](int index) {
    return int64_t(first_step + index % steps_seen - first_query_step) * n + block_start;
  };
  auto load_query_tile = [&](int index) {
    const int head = query_head(index);
    const int64_t row = first_query_row(index);
    cp_async_tile<Tile>(q_stage(index % 2), head_base<const T>(args.q, batch, head) + row * args.q.stride_token,
                        args.q.stride_token, rows_in, args.head_dim);
    cp_async_tile<Tile>(grad_o_stage(index % 2), head_base<const T>(args.grad_o, batch, head) +
                                                     row * args.grad_o.stride_token,
                        args.grad_o.stride_token, rows_in, args.head_dim);
  };
  const int local_row[2] = {warp * 16 + lane / 4, warp * 16 + lane / 4 + 8};
  float grad_k[D / 8][4] = {}, grad_v[D / 8][4] = {};
  if (num_tiles > 0) {
    cp_async_tile<Tile>(k_tile, head_base<const T>(args.k, batch, kv_head) + first_key_token * args.k.stride_token,
                        args.k.stride_token, rows_in, args.head_dim);
    cp_async_tile<Tile>(v_tile, head_base<const T>(args.v, batch, kv_head) + first_key_token * args.v.stride_token,
                        args.v.stride_token, rows_in, args.head_dim);
    load_query_tile(0);
    ptx::cp_async_commit();
  }
  for (int index = 0; index < num_tiles; ++index) {
    next_pipeline_stage(index, num_tiles, load_query_tile);
    const int head = query_head(index);
    const int64_t first_row = first_query_row(index);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = local_row[h];
      const T* query = q_stage(index % 2) + r * Tile::kLd;
      const T* grad_o = grad_o_stage(index % 2) + r * Tile::kLd;
      const float qk = ptx::quad_sum(shared_row_dot<T, D>(query, k_tile + r * Tile::kLd, t));
      const float dp = ptx::quad_sum(shared_row_dot<T, D>(grad_o, v_tile + r * Tile::kLd, t));
      if (r >= rows_in || !mask.real(block_start + r)) continue;
      const int64_t stat = stat_index(args, batch, head, int(first_row) + r);
      const float p = exp2f(qk * scale_log2 - lse_log2(args.lse[stat]));
      accumulate_row<T, D>(grad_v, h, p, grad_o, t);
      accumulate_row<T, D>(grad_k, h, p * (dp - args.delta[stat]), query, t);
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

  T* grad_k_base = head_base<T>(args.grad_k, batch, kv_head);
  T* grad_v_base = head_base<T>(args.grad_v, batch, kv_head);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (local_row[h] >= rows_in) continue;
    const int64_t token = (first_key_token + local_row[h]) * args.grad_k.stride_token;
    store_row<T, D>(grad_k_base + token, grad_k, h, args.softmax_scale, args.head_dim, t);
    store_row<T, D>(grad_v_base + token, grad_v, h, 1.f, args.head_dim, t);
  }
}

template <typename T, int D>
void launch_backward(const ThoughtAttentionArgs& args) {
  const int n = args.prefix_len;
  using Dq = TensorCoreDq<T, D>;
  auto dq_kernel = thought_attention_bwd_dq_mma_kernel<T, D>;
  allow_shared_memory(dq_kernel, Dq::kBytes, "thought_attention_bwd_dq_mma");
  const int64_t dq_blocks = int64_t(ceil_div(n, Dq::kBlockM)) * args.batch * args.num_q_heads;
  check_grid(dq_blocks, args.num_query_steps, "thought_attention_bwd_dq_mma");
  launch_kernel("thought_attention_bwd_dq_mma", dq_kernel, dim3(unsigned(dq_blocks), unsigned(args.num_query_steps)),
                kThreads, Dq::kBytes, args.stream, args);

  using DkDv = TensorCoreDkDv<T, D>;
  auto dkdv_kernel = thought_attention_bwd_prefix_dkdv_mma_kernel<T, D>;
  allow_shared_memory(dkdv_kernel, DkDv::kBytes, "thought_attention_bwd_prefix_dkdv_mma");
  const int64_t dkdv_blocks = int64_t(ceil_div(n, DkDv::kBlockN)) * args.batch * args.num_kv_heads;
  check_grid(dkdv_blocks, 1, "thought_attention_bwd_prefix_dkdv_mma");
  launch_kernel("thought_attention_bwd_prefix_dkdv_mma", dkdv_kernel, unsigned(dkdv_blocks), kThreads, DkDv::kBytes,
                args.stream, args);

  if (args.num_stream_steps > 0) {
    using Stream = StreamDkDv<T, D>;
    auto stream_kernel = thought_attention_bwd_stream_dkdv_mma_kernel<T, D>;
    allow_shared_memory(stream_kernel, Stream::kBytes, "thought_attention_bwd_stream_dkdv_mma");
    const int64_t stream_blocks = int64_t(ceil_div(n, Stream::kBlockRows)) * args.batch * args.num_kv_heads;
    check_grid(stream_blocks, args.num_stream_steps, "thought_attention_bwd_stream_dkdv_mma");
    launch_kernel("thought_attention_bwd_stream_dkdv_mma", stream_kernel,
                  dim3(unsigned(stream_blocks), unsigned(args.num_stream_steps)), kThreads, Stream::kBytes,
                  args.stream, args);
  }
}

}  // namespace

void launch_thought_attention_backward_mma(const ThoughtAttentionArgs& args) {
  dispatch_kind(args.kind, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (sizeof(T) == 2) {
      dispatch_mma_head_dim(args.head_dim, [&](auto head_dim) { launch_backward<T, decltype(head_dim)::value>(args); });
    }
  });
}

}  // namespace quietstar
