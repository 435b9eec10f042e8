// Backward kernels of thought-aware attention on CUDA cores: the exact path for fp32 inputs and for 16-bit
// inputs whose layout cp.async cannot copy (see thought_attention_bwd.cu for the whole backward). Deterministic (no
// atomics); probabilities recomputed from the LSE.
//
//   dq           one block per query block: own stream keys row-wise, prefix tiles dS K as FFMA GEMMs
//   prefix dk/dv one block per prefix key block and kv head: loops over the group's query heads, the query steps
//                and the query blocks at or below the diagonal (and inside the window)
//   stream dk/dv one warp per stream key (s, i): its only queries are position i's own at steps r >= s
#include "common.cuh"
#include "launch_utils.cuh"
#include "thought_attention_mask.cuh"

namespace quietstar {
namespace {

template <typename T, int D>
struct BackwardTiles {
  static constexpr int kBlockM = TileTraits<T>::kRows;  // queries
  static constexpr int kBlockN = 32;                    // keys
  static constexpr int kLd = D + TileTraits<T>::kPad;
  static constexpr int kLdQueries = kBlockM + TileTraits<T>::kAccPad;  // fp32 tiles with a query per column
  static constexpr int kLdKeys = kBlockN + TileTraits<T>::kAccPad;     // fp32 tiles with a key per column
  static constexpr int kLdO = D + TileTraits<T>::kAccPad;
};

template <typename T, int D>
struct DqTiles : BackwardTiles<T, D> {
  using B = BackwardTiles<T, D>;
  static constexpr int kLdDs = B::kBlockN + TileTraits<T>::kPad;
  __host__ __device__ static constexpr auto q() { return first_region<T>(B::kBlockM, B::kLd); }
  __host__ __device__ static constexpr auto grad_o() { return after<T>(q(), B::kBlockM, B::kLd); }
  __host__ __device__ static constexpr auto k() { return after<T>(grad_o(), B::kBlockN, B::kLd); }
  __host__ __device__ static constexpr auto v() { return after<T>(k(), B::kBlockN, B::kLd); }
  __host__ __device__ static constexpr auto s() { return after<float>(v(), B::kBlockM, B::kLdKeys); }
  __host__ __device__ static constexpr auto dp() { return after<float>(s(), B::kBlockM, B::kLdKeys); }
  __host__ __device__ static constexpr auto ds() { return after<T>(dp(), B::kBlockM, kLdDs); }
  __host__ __device__ static constexpr auto dq() { return after<float>(ds(), B::kBlockM, B::kLdO); }
  __host__ __device__ static constexpr auto lse() { return after<float>(dq(), 1, B::kBlockM); }
  __host__ __device__ static constexpr auto delta() { return after<float>(lse(), 1, B::kBlockM); }
  static constexpr int64_t kBytes = delta().end();
};

// Loads the LSE (log2 units) and delta of query rows [first_row, first_row + rows_in) into shared memory; rows
// past the end get +inf / 0.
template <int BM>
__device__ __forceinline__ void load_row_stats(const ThoughtAttentionArgs& args, int batch, int head, int first_row,
                                               int rows_in, float* lse2, float* delta) {
  for (int r = threadIdx.x; r < BM; r += blockDim.x) {
    const int64_t index = stat_index(args, batch, head, first_row + r);
    lse2[r] = r < rows_in ? lse_log2(args.lse[index]) : INFINITY;
    delta[r] = r < rows_in ? args.delta[index] : 0.f;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) thought_attention_bwd_dq_fma_kernel(const ThoughtAttentionArgs args) {
  using Tiles = DqTiles<T, D>;
  constexpr int BM = Tiles::kBlockM;
  constexpr int BN = Tiles::kBlockN;
  QUIETSTAR_DYNAMIC_SMEM(smem);
  T* q_tile = Tiles::q().in(smem);
  T* grad_o_tile = Tiles::grad_o().in(smem);
  T* k_tile = Tiles::k().in(smem);
  T* v_tile = Tiles::v().in(smem);
  float* scores = Tiles::s().in(smem);
  float* grad_p = Tiles::dp().in(smem);
  T* grad_s = Tiles::ds().in(smem);
  float* grad_q = Tiles::dq().in(smem);
  float* lse2 = Tiles::lse().in(smem);
  float* delta = Tiles::delta().in(smem);

  const int n = args.prefix_len;
  const QueryBlock block = QueryBlock::decode(args, BM);
  const int block_start = block.block_start, rows_in = block.rows_in, step = block.step;
  const int batch = block.batch, head = block.head, kv_head = block.kv_head;
  const int64_t first_row = block.first_row;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const float scale_log2 = args.softmax_scale * kLog2e;
  const ThoughtMask mask = make_mask(args, batch);

  const T* k_base = head_base<const T>(args.k, batch, kv_head);
  const T* v_base = head_base<const T>(args.v, batch, kv_head);
  load_tokens<T, BM, D>(q_tile, Tiles::kLd, head_base<const T>(args.q, batch, head), args.q, first_row, rows_in,
                        args.head_dim);
  load_tokens<T, BM, D>(grad_o_tile, Tiles::kLd, head_base<const T>(args.grad_o, batch, head), args.grad_o, first_row,
                        rows_in, args.head_dim);
  load_row_stats<BM>(args, batch, head, int(first_row), rows_in, lse2, delta);
  __syncthreads();

  // Own stream keys, row-wise; the dQ accumulator row starts here.
  for (int r = warp; r < BM; r += kWarps) {
    const int i = block_start + r;
    float acc[D / kWarpSize] = {};
    if (r < rows_in && mask.real(i)) {
      for (int s = 1; s <= step; ++s) {
        const T* k_row = k_base + (int64_t(s) * n + i) * args.k.stride_token;
        const T* v_row = v_base + (int64_t(s) * n + i) * args.v.stride_token;
        float qk = 0.f;
        float dp = 0.f;
        for (int c = lane; c < args.head_dim; c += kWarpSize) {
          qk = fmaf(to_float(q_tile[r * Tiles::kLd + c]), to_float(k_row[c]), qk);
          dp = fmaf(to_float(grad_o_tile[r * Tiles::kLd + c]), to_float(v_row[c]), dp);
        }
        const float p = exp2f(warp_sum(qk) * scale_log2 - lse2[r]);
        const float ds = p * (warp_sum(dp) - delta[r]);
#pragma unroll
        for (int t = 0; t < D / kWarpSize; ++t) {
          const int c = lane + t * kWarpSize;
          if (c < args.head_dim) acc[t] = fmaf(ds, to_float(k_row[c]), acc[t]);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < D / kWarpSize; ++t) grad_q[r * Tiles::kLdO + lane + t * kWarpSize] = acc[t];
  }

  const int key_end = min(block_start + BM, n);
  for (int start_n = mask.first_key(block_start, BN); start_n < key_end; start_n += BN) {
    const int keys_in = min(BN, n - start_n);
    load_tokens<T, BN, D>(k_tile, Tiles::kLd, k_base, args.k, start_n, keys_in, args.head_dim);
    load_tokens<T, BN, D>(v_tile, Tiles::kLd, v_base, args.v, start_n, keys_in, args.head_dim);
    __syncthreads();
    block_gemm<T, BM, BN, D, true>(q_tile, Tiles::kLd, k_tile, Tiles::kLd, scores, Tiles::kLdKeys, false);
    block_gemm<T, BM, BN, D, true>(grad_o_tile, Tiles::kLd, v_tile, Tiles::kLd, grad_p, Tiles::kLdKeys, false);
    __syncthreads();
    for (int index = threadIdx.x; index < BM * BN; index += blockDim.x) {
      const int r = index / BN;
      const int c = index % BN;
      const bool visible = r < rows_in && mask.prefix_visible(block_start + r, start_n + c);
      const float p = visible ? exp2f(scores[r * Tiles::kLdKeys + c] * scale_log2 - lse2[r]) : 0.f;
      grad_s[r * Tiles::kLdDs + c] = from_float<T>(p * (grad_p[r * Tiles::kLdKeys + c] - delta[r]));
    }
    __syncthreads();
    block_gemm<T, BM, D, BN, false>(grad_s, Tiles::kLdDs, k_tile, Tiles::kLd, grad_q, Tiles::kLdO, true);
    __syncthreads();
  }

  T* dq_base = head_base<T>(args.grad_q, batch, head);
  for (int index = threadIdx.x; index < rows_in * args.head_dim; index += blockDim.x) {
    const int r = index / args.head_dim;
    const int c = index % args.head_dim;
    dq_base[(first_row + r) * args.grad_q.stride_token + c] =
        from_float<T>(grad_q[r * Tiles::kLdO + c] * args.softmax_scale);
  }
}

template <typename T, int D>
struct PrefixDkDvTiles : BackwardTiles<T, D> {
  using B = BackwardTiles<T, D>;
  static constexpr int kLdP = B::kBlockM + TileTraits<T>::kPad;  // 16-bit key x query tiles
  __host__ __device__ static constexpr auto k() { return first_region<T>(B::kBlockN, B::kLd); }
  __host__ __device__ static constexpr auto v() { return after<T>(k(), B::kBlockN, B::kLd); }
  __host__ __device__ static constexpr auto q() { return after<T>(v(), B::kBlockM, B::kLd); }
  __host__ __device__ static constexpr auto grad_o() { return after<T>(q(), B::kBlockM, B::kLd); }
  __host__ __device__ static constexpr auto st() { return after<float>(grad_o(), B::kBlockN, B::kLdQueries); }
  __host__ __device__ static constexpr auto dpt() { return after<float>(st(), B::kBlockN, B::kLdQueries); }
  __host__ __device__ static constexpr auto pt() { return after<T>(dpt(), B::kBlockN, kLdP); }
  __host__ __device__ static constexpr auto dst() { return after<T>(pt(), B::kBlockN, kLdP); }
  __host__ __device__ static constexpr auto dk() { return after<float>(dst(), B::kBlockN, B::kLdO); }
  __host__ __device__ static constexpr auto dv() { return after<float>(dk(), B::kBlockN, B::kLdO); }
  __host__ __device__ static constexpr auto lse() { return after<float>(dv(), 1, B::kBlockM); }
  __host__ __device__ static constexpr auto delta() { return after<float>(lse(), 1, B::kBlockM); }
  static constexpr int64_t kBytes = delta().end();
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) thought_attention_bwd_prefix_dkdv_fma_kernel(const ThoughtAttentionArgs args) {
  using Tiles = PrefixDkDvTiles<T, D>;
  constexpr int BM = Tiles::kBlockM;
  constexpr int BN = Tiles::kBlockN;
  QUIETSTAR_DYNAMIC_SMEM(smem);
  T* k_tile = Tiles::k().in(smem);
  T* v_tile = Tiles::v().in(smem);
  T* q_tile = Tiles::q().in(smem);
  T* grad_o_tile = Tiles::grad_o().in(smem);
  float* scores_t = Tiles::st().in(smem);
  float* grad_p_t = Tiles::dpt().in(smem);
  T* probs_t = Tiles::pt().in(smem);
  T* grad_s_t = Tiles::dst().in(smem);
  float* grad_k = Tiles::dk().in(smem);
  float* grad_v = Tiles::dv().in(smem);
  float* lse2 = Tiles::lse().in(smem);
  float* delta = Tiles::delta().in(smem);

  const int n = args.prefix_len;
  const int num_blocks = ceil_div(n, BN);
  const int key_start = int(blockIdx.x % num_blocks) * BN;
  const int batch_head = blockIdx.x / num_blocks;
  const int batch = batch_head / args.num_kv_heads;
  const int kv_head = batch_head % args.num_kv_heads;
  const int group_size = args.num_q_heads / args.num_kv_heads;
  const int keys_in = min(BN, n - key_start);
  const float scale_log2 = args.softmax_scale * kLog2e;
  const ThoughtMask mask = make_mask(args, batch);

  T* dk_base = head_base<T>(args.grad_k, batch, kv_head);
  T* dv_base = head_base<T>(args.grad_v, batch, kv_head);
  load_tokens<T, BN, D>(k_tile, Tiles::kLd, head_base<const T>(args.k, batch, kv_head), args.k, key_start, keys_in,
                        args.head_dim);
  load_tokens<T, BN, D>(v_tile, Tiles::kLd, head_base<const T>(args.v, batch, kv_head), args.v, key_start, keys_in,
                        args.head_dim);
  zero_tile<BN, D>(grad_k, Tiles::kLdO);
  zero_tile<BN, D>(grad_v, Tiles::kLdO);

  // Queries i >= j see key j; with a window only i < j + W, so the last key of the block bounds the range.
  const int query_begin = key_start / BM * BM;
  const int query_end = args.window == 0 ? n : min(n, key_start + keys_in - 1 + args.window);
  for (int g = 0; g < group_size; ++g) {
    const int head = kv_head * group_size + g;
    const T* q_base = head_base<const T>(args.q, batch, head);
    const T* grad_o_base = head_base<const T>(args.grad_o, batch, head);
    for (int query_step = 0; query_step < args.num_query_steps; ++query_step) {
      for (int query_start = query_begin; query_start < query_end; query_start += BM) {
        const int rows_in = min(BM, n - query_start);
        const int64_t first_row = int64_t(query_step) * n + query_start;
        __syncthreads();  // the previous iteration's GEMMs are done with the query tiles
        load_tokens<T, BM, D>(q_tile, Tiles::kLd, q_base, args.q, first_row, rows_in, args.head_dim);
        load_tokens<T, BM, D>(grad_o_tile, Tiles::kLd, grad_o_base, args.grad_o, first_row, rows_in, args.head_dim);
        load_row_stats<BM>(args, batch, head, int(first_row), rows_in, lse2, delta);
        __syncthreads();
        block_gemm<T, BN, BM, D, true>(k_tile, Tiles::kLd, q_tile, Tiles::kLd, scores_t, Tiles::kLdQueries, false);
        block_gemm<T, BN, BM, D, true>(v_tile, Tiles::kLd, grad_o_tile, Tiles::kLd, grad_p_t, Tiles::kLdQueries,
                                       false);
        __syncthreads();
        for (int index = threadIdx.x; index < BN * BM; index += blockDim.x) {
          const int c = index / BM;  // key
          const int r = index % BM;  // query
          const bool visible = r < rows_in && mask.prefix_visible(query_start + r, key_start + c);
          const float p = visible ? exp2f(scores_t[c * Tiles::kLdQueries + r] * scale_log2 - lse2[r]) : 0.f;
          probs_t[c * Tiles::kLdP + r] = from_float<T>(p);
          grad_s_t[c * Tiles::kLdP + r] = from_float<T>(p * (grad_p_t[c * Tiles::kLdQueries + r] - delta[r]));
        }
        __syncthreads();
        block_gemm<T, BN, D, BM, false>(probs_t, Tiles::kLdP, grad_o_tile, Tiles::kLd, grad_v, Tiles::kLdO, true);
        block_gemm<T, BN, D, BM, false>(grad_s_t, Tiles::kLdP, q_tile, Tiles::kLd, grad_k, Tiles::kLdO, true);
      }
    }
  }
  __syncthreads();
  for (int index = threadIdx.x; index < keys_in * args.head_dim; index += blockDim.x) {
    const int c = index / args.head_dim;
    const int d = index % args.head_dim;
    const int64_t row = int64_t(key_start + c) * args.grad_k.stride_token + d;
    dk_base[row] = from_float<T>(grad_k[c * Tiles::kLdO + d] * args.softmax_scale);
    dv_base[row] = from_float<T>(grad_v[c * Tiles::kLdO + d]);
  }
}

constexpr int kStreamRowsPerBlock = 16;

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) thought_attention_bwd_stream_dkdv_fma_kernel(const ThoughtAttentionArgs args) {
  const int n = args.prefix_len;
  const int num_blocks = ceil_div(n, kStreamRowsPerBlock);
  const int batch_head = blockIdx.x / num_blocks;
  const int batch = batch_head / args.num_kv_heads;
  const int kv_head = batch_head % args.num_kv_heads;
  const int group_size = args.num_q_heads / args.num_kv_heads;
  const int stream_step = 1 + blockIdx.y;
  const int first_query_step = args.num_stream_steps + 1 - args.num_query_steps;
  const int lane = threadIdx.x % kWarpSize;
  const float scale_log2 = args.softmax_scale * kLog2e;
  const ThoughtMask mask = make_mask(args, batch);
  const int64_t key_row = int64_t(stream_step) * n;

  for (int r = threadIdx.x / kWarpSize; r < kStreamRowsPerBlock; r += kWarps) {
    const int i = int(blockIdx.x % num_blocks) * kStreamRowsPerBlock + r;
    if (i >= n) break;
    const T* k_row = head_base<const T>(args.k, batch, kv_head) + (key_row + i) * args.k.stride_token;
    const T* v_row = head_base<const T>(args.v, batch, kv_head) + (key_row + i) * args.v.stride_token;
    float k_reg[D / kWarpSize], v_reg[D / kWarpSize], dk[D / kWarpSize] = {}, dv[D / kWarpSize] = {};
#pragma unroll
    for (int t = 0; t < D / kWarpSize; ++t) {
      const int c = lane + t * kWarpSize;
      k_reg[t] = c < args.head_dim ? to_float(k_row[c]) : 0.f;
      v_reg[t] = c < args.head_dim ? to_float(v_row[c]) : 0.f;
    }
    // Key (s, i) is visible only to position i's own queries at steps r >= s, and only if i is a real token.
    const int first_step = mask.real(i) ? max(stream_step, first_query_step) : args.num_stream_steps + 1;
    for (int g = 0; g < group_size; ++g) {
      const int head = kv_head * group_size + g;
      for (int query_step = first_step; query_step <= args.num_stream_steps; ++query_step) {
        const int query = (query_step - first_query_step) * n + i;
        const T* q_row = head_base<const T>(args.q, batch, head) + int64_t(query) * args.q.stride_token;
        const T* grad_o_row = head_base<const T>(args.grad_o, batch, head) + int64_t(query) * args.grad_o.stride_token;
        float q_reg[D / kWarpSize], grad_o_reg[D / kWarpSize];
        float qk = 0.f;
        float dp = 0.f;
#pragma unroll
        for (int t = 0; t < D / kWarpSize; ++t) {
          const int c = lane + t * kWarpSize;
          q_reg[t] = c < args.head_dim ? to_float(q_row[c]) : 0.f;
          grad_o_reg[t] = c < args.head_dim ? to_float(grad_o_row[c]) : 0.f;
          qk = fmaf(q_reg[t], k_reg[t], qk);
          dp = fmaf(grad_o_reg[t], v_reg[t], dp);
        }
        const int64_t stat = stat_index(args, batch, head, query);
        const float p = exp2f(warp_sum(qk) * scale_log2 - lse_log2(args.lse[stat]));
        const float ds = p * (warp_sum(dp) - args.delta[stat]);
#pragma unroll
        for (int t = 0; t < D / kWarpSize; ++t) {
          dv[t] = fmaf(p, grad_o_reg[t], dv[t]);
          dk[t] = fmaf(ds, q_reg[t], dk[t]);
        }
      }
    }
    T* dk_row = head_base<T>(args.grad_k, batch, kv_head) + (key_row + i) * args.grad_k.stride_token;
    T* dv_row = head_base<T>(args.grad_v, batch, kv_head) + (key_row + i) * args.grad_v.stride_token;
#pragma unroll
    for (int t = 0; t < D / kWarpSize; ++t) {
      const int c = lane + t * kWarpSize;
      if (c < args.head_dim) {
        dk_row[c] = from_float<T>(dk[t] * args.softmax_scale);
        dv_row[c] = from_float<T>(dv[t]);
      }
    }
  }
}

}  // namespace

void launch_thought_attention_backward_fma(const ThoughtAttentionArgs& args) {
  dispatch_kind(args.kind, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_head_dim(args.head_dim, [&](auto head_dim) {
      constexpr int D = decltype(head_dim)::value;
      const int n = args.prefix_len;
      using Dq = DqTiles<T, D>;
      auto dq_kernel = thought_attention_bwd_dq_fma_kernel<T, D>;
      allow_shared_memory(dq_kernel, Dq::kBytes, "thought_attention_bwd_dq_fma");
      const int64_t dq_blocks = int64_t(ceil_div(n, Dq::kBlockM)) * args.batch * args.num_q_heads;
      check_grid(dq_blocks, args.num_query_steps, "thought_attention_bwd_dq_fma");
      launch_kernel("thought_attention_bwd_dq_fma", dq_kernel,
                    dim3(unsigned(dq_blocks), unsigned(args.num_query_steps)), kThreads, Dq::kBytes, args.stream, args);

      using Prefix = PrefixDkDvTiles<T, D>;
      auto prefix_kernel = thought_attention_bwd_prefix_dkdv_fma_kernel<T, D>;
      allow_shared_memory(prefix_kernel, Prefix::kBytes, "thought_attention_bwd_prefix_dkdv_fma");
      const int64_t prefix_blocks = int64_t(ceil_div(n, Prefix::kBlockN)) * args.batch * args.num_kv_heads;
      check_grid(prefix_blocks, 1, "thought_attention_bwd_prefix_dkdv_fma");
      launch_kernel("thought_attention_bwd_prefix_dkdv_fma", prefix_kernel, unsigned(prefix_blocks), kThreads,
                    Prefix::kBytes, args.stream, args);

      if (args.num_stream_steps > 0) {
        const int64_t stream_blocks = int64_t(ceil_div(n, kStreamRowsPerBlock)) * args.batch * args.num_kv_heads;
        check_grid(stream_blocks, args.num_stream_steps, "thought_attention_bwd_stream_dkdv_fma");
        launch_kernel("thought_attention_bwd_stream_dkdv_fma", thought_attention_bwd_stream_dkdv_fma_kernel<T, D>,
                      dim3(unsigned(stream_blocks), unsigned(args.num_stream_steps)), kThreads, 0, args.stream, args);
      }
    });
  });
}

}  // namespace quietstar
