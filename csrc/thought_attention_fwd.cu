// Forward kernel of thought-aware attention on tensor cores, in the FlashAttention-2 design.
//
// One block of four warps per (64 query positions, batch * query head, query step); each warp owns 16 query rows.
// Q is loaded once into mma A fragments; S = Q K^T, the online softmax (fp32, log2 domain) and the O accumulator
// stay in registers; P is rounded to 16 bits in registers and fed to the P V mma as its A operand with no shared
// memory round trip. Key/value tiles stream through two shared-memory stages with cp.async, the next tile's copy in
// flight while the current one is computed. The tiles a block visits, in order:
//   1. its own-stream keys (s, i), s = 1..step: for a block they are the contiguous rows s * n + block_start + r,
//      loaded as one tile per step; query r sees only row r of each, so these are row-wise dot products on the
//      fragments the thread already holds (never a dense diagonal mma);
//   2. the prefix key tiles up to the diagonal (and inside the window): mma.sync m16n8k16; the mask predicate is
//      evaluated only on tiles that need it (diagonal, window edge, past the end, padding).
// The stored LSE is natural-log; a row that sees no key gets o = 0 and lse = -inf.
//
// Inputs whose layout cp.async cannot copy (head dim not a multiple of 8, strides or pointers not 16-byte aligned)
// and fp32 inputs go to the exact FMA kernel (thought_attention_fwd_fma.cu).
#include "async_tile.cuh"
#include "fragment_rows.cuh"
#include "key_tiles.cuh"
#include "launch_utils.cuh"
#include "thought_attention_mask.cuh"
#include "warp_mma.cuh"

namespace quietstar {
namespace {

template <typename T, int D>
struct TensorCoreForward {
  static constexpr int kBlockM = 64;
  static constexpr int kBlockN = 64;
  using QTile = PaddedTile<T, kBlockM, D>;
  using Keys = KeyTiles<T, PaddedTile<T, kBlockM, D>, kBlockM, kBlockN>;
  static constexpr int64_t kBytes = QTile::kBytes + Keys::kBytes;  // Q, then the key stages
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 2) thought_attention_fwd_mma_kernel(const ThoughtAttentionArgs args) {
  using Layout = TensorCoreForward<T, D>;
  using QTile = typename Layout::QTile;
  using KvTile = typename Layout::Keys::Tile;
  constexpr int BM = Layout::kBlockM;
  constexpr int BN = Layout::kBlockN;
  QUIETSTAR_DYNAMIC_SMEM(smem);
  T* q_tile = reinterpret_cast<T*>(smem);

  const QueryBlock block = QueryBlock::decode(args, BM);
  const int block_start = block.block_start, rows_in = block.rows_in;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const float scale_log2 = args.softmax_scale * kLog2e;
  const ThoughtMask mask = make_mask(args, block.batch);
  const typename Layout::Keys keys(args, block, mask, smem + QTile::kBytes);
  auto load_keys = [&](int index) { keys.load(index); };

  const T* q_base = head_base<const T>(args.q, block.batch, block.head);
  cp_async_tile<QTile>(q_tile, q_base + block.first_row * args.q.stride_token, args.q.stride_token, rows_in,
                       args.head_dim);
  keys.load(0);
  ptx::cp_async_commit();

  // This thread's rows of the block: warp * 16 + g (fragment elements 0, 1) and + 8 (elements 2, 3).
  const int local_row[2] = {warp * 16 + g, warp * 16 + g + 8};
  bool row_real[2];
  for (int h = 0; h < 2; ++h) row_real[h] = local_row[h] < rows_in && mask.real(block_start + local_row[h]);
  uint32_t q_frag[D / 16][4];
  float acc[D / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};

  for (int index = 0; index < keys.count; ++index) {
    next_pipeline_stage(index, keys.count, load_keys);
    if (index == 0) load_a_fragments<QTile>(q_frag, q_tile, warp * 16, lane);
    const T* k_tile = keys.k(index);
    const T* v_tile = keys.v(index);
    const KeyTile tile = keys.tile(index);

    if (tile.stream) {
      // Row r's score is q_r . k_r, its value row v_r.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const T* key = k_tile + local_row[h] * KvTile::kLd;
        const float score = ptx::quad_sum(fragment_row_dot<T, D>(q_frag, h, key, t)) * scale_log2;
        if (!row_real[h]) continue;
        const float m_new = fmaxf(row_max[h], score);
        const float alpha = exp2f(row_max[h] - m_new);
        const float p = exp2f(score - m_new);
        row_max[h] = m_new;
        row_sum[h] = row_sum[h] * alpha + p;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) {
          acc[dn][2 * h] *= alpha;
          acc[dn][2 * h + 1] *= alpha;
        }
        accumulate_row<T, D>(acc, h, p, v_tile + local_row[h] * KvTile::kLd, t);
      }
    } else {
      float s[BN / 8][4] = {};
      mma_n_major<KvTile>(s, q_frag, k_tile, lane);
      const bool needs_mask = !mask.sees_whole_tile(block_start, BM, tile.start, BN);
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int jt = 0; jt < BN / 8; ++jt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e / 2;
          const int key = tile.start + jt * 8 + 2 * t + e % 2;
          const bool visible = !needs_mask || (local_row[h] < rows_in &&
                                               mask.prefix_visible(block_start + local_row[h], key));
          s[jt][e] = visible ? s[jt][e] * scale_log2 : -INFINITY;
          tile_max[h] = fmaxf(tile_max[h], s[jt][e]);
        }
      }
      float alpha[2], m_shift[2], p_sum[2] = {0.f, 0.f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float m_new = fmaxf(row_max[h], ptx::quad_max(tile_max[h]));
        // A row that has seen no key yet keeps max -inf; shift by 0 there so that exp2 gives 0, not NaN.
        m_shift[h] = m_new == -INFINITY ? 0.f : m_new;
        alpha[h] = exp2f(row_max[h] - m_shift[h]);
        row_max[h] = m_new;
      }
#pragma unroll
      for (int jt = 0; jt < BN / 8; ++jt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[jt][e] = exp2f(s[jt][e] - m_shift[e / 2]);
          p_sum[e / 2] += s[jt][e];
        }
      }
      uint32_t p_frag[BN / 16][4];
      accumulator_a_fragments<T>(p_frag, s);
#pragma unroll
      for (int h = 0; h < 2; ++h) row_sum[h] = row_sum[h] * alpha[h] + ptx::quad_sum(p_sum[h]);
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[dn][e] *= alpha[e / 2];
      }
      mma_k_major<KvTile>(acc, p_frag, v_tile, lane);
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

  T* o_base = head_base<T>(args.o, block.batch, block.head);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (local_row[h] >= rows_in) continue;
    const float l_i = row_sum[h];
    const bool seen = l_i != 0.f;  // a NaN sum (NaN input) is "seen" too, so the NaN reaches o and lse
    const float inverse = seen ? 1.f / l_i : 0.f;
    store_row<T, D>(o_base + (block.first_row + local_row[h]) * args.o.stride_token, acc, h, inverse, args.head_dim,
                    t);
    if (t == 0) {
      args.lse[stat_index(args, block.batch, block.head, int(block.first_row) + local_row[h])] =
          seen ? (row_max[h] + log2f(l_i)) * kLn2 : -INFINITY;
    }
  }
}

template <typename T, int D>
void launch_forward_on_tensor_cores(const ThoughtAttentionArgs& args) {
  using Layout = TensorCoreForward<T, D>;
  auto kernel = thought_attention_fwd_mma_kernel<T, D>;
  allow_shared_memory(kernel, Layout::kBytes, "thought_attention_fwd_mma");
  const int64_t grid_x = int64_t(ceil_div(args.prefix_len, Layout::kBlockM)) * args.batch * args.num_q_heads;
  check_grid(grid_x, args.num_query_steps, "thought_attention_fwd_mma");
  launch_kernel("thought_attention_fwd_mma", kernel, dim3(unsigned(grid_x), unsigned(args.num_query_steps)), kThreads,
                Layout::kBytes, args.stream, args);
}

}  // namespace

void launch_thought_attention_forward(const ThoughtAttentionArgs& args) {
  if (!tensor_core_layout(args, false)) {
    launch_thought_attention_forward_fma(args);
    return;
  }
  dispatch_kind(args.kind, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (sizeof(T) == 2) {
      dispatch_mma_head_dim(args.head_dim, [&](auto head_dim) {
        launch_forward_on_tensor_cores<T, decltype(head_dim)::value>(args);
      });
    }
  });
}

}  // namespace quietstar
