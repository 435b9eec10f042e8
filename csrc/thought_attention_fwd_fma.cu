// Forward kernel of thought-aware attention on CUDA cores: the exact path for fp32 inputs (IEEE products, like
// torch's matmul without TF32) and for 16-bit inputs whose layout the tensor-core kernel cannot copy with cp.async.
//
// One block per (block of query positions, batch * query head, query step). Online softmax, fp32 statistics in the
// log2 domain, over
//   1. the rows' own stream keys (s, i), s = 1..step: row-wise dot products, one warp per row -- never dense
//      diagonal tiles;
//   2. the prefix key tiles the block can see, Q K^T and P V as FFMA GEMMs on shared tiles.
// The stored LSE is natural-log; a row that sees no key gets o = 0 and lse = -inf.
#include "common.cuh"
#include "launch_utils.cuh"
#include "thought_attention_mask.cuh"

namespace quietstar {
namespace {

template <typename T, int D>
struct ForwardTiles {
  static constexpr int kBlockM = TileTraits<T>::kRows;
  static constexpr int kBlockN = TileTraits<T>::kRows;
  static constexpr int kLd = D + TileTraits<T>::kPad;
  static constexpr int kLdP = kBlockN + TileTraits<T>::kPad;
  static constexpr int kLdS = kBlockN + TileTraits<T>::kAccPad;
  static constexpr int kLdO = D + TileTraits<T>::kAccPad;
  __host__ __device__ static constexpr auto q() { return first_region<T>(kBlockM, kLd); }
  __host__ __device__ static constexpr auto k() { return after<T>(q(), kBlockN, kLd); }
  __host__ __device__ static constexpr auto v() { return after<T>(k(), kBlockN, kLd); }
  __host__ __device__ static constexpr auto s() { return after<float>(v(), kBlockM, kLdS); }
  __host__ __device__ static constexpr auto p() { return after<T>(s(), kBlockM, kLdP); }
  __host__ __device__ static constexpr auto o() { return after<float>(p(), kBlockM, kLdO); }
  __host__ __device__ static constexpr auto row_max() { return after<float>(o(), 1, kBlockM); }
  __host__ __device__ static constexpr auto row_sum() { return after<float>(row_max(), 1, kBlockM); }
  static constexpr int64_t kBytes = row_sum().end();
};

template <typename T, int D>
// An explicit minimum of one block per SM: without it ptxas (nvcc 13.0, sm_90a) picks 40 registers for fp32 and
// spills 24 B per thread; with it, 75 registers and no spills.
__global__ void __launch_bounds__(kThreads, 1) thought_attention_fwd_fma_kernel(const ThoughtAttentionArgs args) {
  using Tiles = ForwardTiles<T, D>;
  constexpr int BM = Tiles::kBlockM;
  constexpr int BN = Tiles::kBlockN;
  QUIETSTAR_DYNAMIC_SMEM(smem);
  T* q_tile = Tiles::q().in(smem);
  T* k_tile = Tiles::k().in(smem);
  T* v_tile = Tiles::v().in(smem);
  float* scores = Tiles::s().in(smem);
  T* probs = Tiles::p().in(smem);
  float* acc = Tiles::o().in(smem);
  float* row_max = Tiles::row_max().in(smem);
  float* row_sum = Tiles::row_sum().in(smem);

  const int n = args.prefix_len;
  const QueryBlock block = QueryBlock::decode(args, BM);
  const int block_start = block.block_start, rows_in = block.rows_in, step = block.step;
  const int batch = block.batch, head = block.head, kv_head = block.kv_head;
  const int64_t first_row = block.first_row;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const float scale_log2 = args.softmax_scale * kLog2e;
  const ThoughtMask mask = make_mask(args, batch);

  const T* q_base = head_base<const T>(args.q, batch, head);
  const T* k_base = head_base<const T>(args.k, batch, kv_head);
  const T* v_base = head_base<const T>(args.v, batch, kv_head);
  load_tokens<T, BM, D>(q_tile, Tiles::kLd, q_base, args.q, first_row, rows_in, args.head_dim);
  __syncthreads();

  // 1. Own stream keys: one warp per row, lanes over the head dim. The accumulator row starts here.
  for (int r = warp; r < BM; r += kWarps) {
    const int i = block_start + r;
    float out[D / kWarpSize] = {};
    float m_i = -INFINITY;
    float l_i = 0.f;
    if (r < rows_in && mask.real(i)) {
      for (int s = 1; s <= step; ++s) {
        const T* k_row = k_base + (int64_t(s) * n + i) * args.k.stride_token;
        const T* v_row = v_base + (int64_t(s) * n + i) * args.v.stride_token;
        float dot = 0.f;
        for (int c = lane; c < args.head_dim; c += kWarpSize) {
          dot = fmaf(to_float(q_tile[r * Tiles::kLd + c]), to_float(k_row[c]), dot);
        }
        const float score = warp_sum(dot) * scale_log2;
        const float m_new = fmaxf(m_i, score);
        const float alpha = exp2f(m_i - m_new);
        const float p = exp2f(score - m_new);
#pragma unroll
        for (int t = 0; t < D / kWarpSize; ++t) {
          const int c = lane + t * kWarpSize;
          out[t] = out[t] * alpha + (c < args.head_dim ? p * to_float(v_row[c]) : 0.f);
        }
        l_i = l_i * alpha + p;
        m_i = m_new;
      }
    }
#pragma unroll
    for (int t = 0; t < D / kWarpSize; ++t) acc[r * Tiles::kLdO + lane + t * kWarpSize] = out[t];
    if (lane == 0) {
      row_max[r] = m_i;
      row_sum[r] = l_i;
    }
  }

  // 2. Prefix key tiles up to the diagonal.
  const int key_end = min(block_start + BM, n);
  for (int start_n = mask.first_key(block_start, BN); start_n < key_end; start_n += BN) {
    const int keys_in = min(BN, n - start_n);
    load_tokens<T, BN, D>(k_tile, Tiles::kLd, k_base, args.k, start_n, keys_in, args.head_dim);
    load_tokens<T, BN, D>(v_tile, Tiles::kLd, v_base, args.v, start_n, keys_in, args.head_dim);
    __syncthreads();
    block_gemm<T, BM, BN, D, true>(q_tile, Tiles::kLd, k_tile, Tiles::kLd, scores, Tiles::kLdS, false);
    __syncthreads();
    // Rows past the end see nothing: they get probability 0 and stay finite.
    for (int r = warp; r < BM; r += kWarps) {
      const int i = block_start + r;
      float score[BN / kWarpSize];
      float tile_max = -INFINITY;
#pragma unroll
      for (int t = 0; t < BN / kWarpSize; ++t) {
        const int c = lane + t * kWarpSize;
        const bool visible = r < rows_in && mask.prefix_visible(i, start_n + c);
        score[t] = visible ? scores[r * Tiles::kLdS + c] * scale_log2 : -INFINITY;
        tile_max = fmaxf(tile_max, score[t]);
      }
      const float m_i = row_max[r];
      const float m_new = fmaxf(m_i, warp_max(tile_max));
      // A row that has seen no key yet keeps max -inf; shift by 0 there so that exp2 gives 0, not NaN.
      const float m_shift = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m_i - m_shift);
      float p_sum = 0.f;
#pragma unroll
      for (int t = 0; t < BN / kWarpSize; ++t) {
        const float p = exp2f(score[t] - m_shift);
        p_sum += p;
        probs[r * Tiles::kLdP + lane + t * kWarpSize] = from_float<T>(p);
      }
      p_sum = warp_sum(p_sum);
      for (int c = lane; c < D; c += kWarpSize) acc[r * Tiles::kLdO + c] *= alpha;
      __syncwarp();
      if (lane == 0) {
        row_max[r] = m_new;
        row_sum[r] = row_sum[r] * alpha + p_sum;
      }
    }
    __syncthreads();
    block_gemm<T, BM, D, BN, false>(probs, Tiles::kLdP, v_tile, Tiles::kLd, acc, Tiles::kLdO, true);
    __syncthreads();
  }

  T* o_base = head_base<T>(args.o, batch, head);
  for (int r = warp; r < rows_in; r += kWarps) {
    const float l_i = row_sum[r];
    const bool seen = l_i != 0.f;  // a NaN sum (NaN input) is "seen" too, so the NaN reaches o and lse
    T* o_row = o_base + (first_row + r) * args.o.stride_token;
    for (int c = lane; c < args.head_dim; c += kWarpSize) {
      o_row[c] = from_float<T>(seen ? acc[r * Tiles::kLdO + c] / l_i : 0.f);
    }
    if (lane == 0) {
      args.lse[stat_index(args, batch, head, int(first_row) + r)] =
          seen ? (row_max[r] + log2f(l_i)) * kLn2 : -INFINITY;
    }
  }
}

}  // namespace

void launch_thought_attention_forward_fma(const ThoughtAttentionArgs& args) {
  dispatch_kind(args.kind, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_head_dim(args.head_dim, [&](auto head_dim) {
      constexpr int D = decltype(head_dim)::value;
      using Tiles = ForwardTiles<T, D>;
      auto kernel = thought_attention_fwd_fma_kernel<T, D>;
      allow_shared_memory(kernel, Tiles::kBytes, "thought_attention_fwd_fma");
      const int64_t grid_x = int64_t(ceil_div(args.prefix_len, Tiles::kBlockM)) * args.batch * args.num_q_heads;
      check_grid(grid_x, args.num_query_steps, "thought_attention_fwd_fma");
      launch_kernel("thought_attention_fwd_fma", kernel, dim3(unsigned(grid_x), unsigned(args.num_query_steps)), kThreads,
                    Tiles::kBytes, args.stream, args);
    });
  });
}

}  // namespace quietstar
