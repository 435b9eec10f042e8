// Kernels of the fused LM-head losses: statistics of z = H W^T without writing z to memory.
//
// Forward: one block per (block of rows, slice of the vocabulary). For each logit tile of the slice the block runs
// a K-loop over the hidden dim, then an epilogue reading the fp32 tile from shared memory: per row an online max /
// sum of exp(z * inv_t), plus the target's logit (cross-entropy) or the running Gumbel-max sample
// argmax(z * sample_scale + g) and its logit (sampling), g read from a tensor or drawn from Philox4x32-10 keyed by
// a seed on the device (never stored). Per-slice partials are merged by the op layer. Banned ids get the logit
// -1e10, as in the official code.
//
// Gradient: for a block of rows and a tile of the vocabulary, recompute the logit tile exactly as the forward did
// and write G = coef * inv_t * (softmax(z * inv_t) - onehot(target)) in the inputs' dtype; two GEMMs then give dH
// and dW.
//
// Logit tiles, fp16/bf16 (MmaLogitTiles): a 64-row x 128-column tile per block of 4 warps; each warp owns 16 rows
// x 128 columns as mma.m16n8k16 accumulators in registers (16 n-tiles x 4 floats). The hidden dim is walked in
// chunks of 64: H and W chunks are double-buffered in padded shared tiles, chunk c + 1 copied by cp.async while
// chunk c feeds ldmatrix.x4 (A fragments of H, B fragments of the n-major W rows) and the mma. One barrier per
// chunk: after waiting for chunk c, the barrier also tells every warp that chunk c - 1's buffer is free, so the
// copy of chunk c + 1 goes there (wait_group 0 then, instead of issuing c + 1 before the wait with wait_group 1 and
// a second barrier). The finished accumulators go to a shared fp32 tile (rows padded by 8 floats: the float2
// stores of a quad pattern hit distinct banks) so that one epilogue serves both the 16-bit and the fp32 tiles.
// cp.async needs 16-byte aligned rows: when the hidden dim or a row stride is not a multiple of 8 elements, or a
// base pointer not 16-byte aligned (a row slice of an odd-width tensor), the same loop fills the buffers with
// synchronous element-wise loads (load_tile) instead; fragments and mma order stay the same, so both paths give
// bit-identical logits.
//
// Logit tiles, fp32 (FfmaLogitTiles): 32 x 32 tiles by block_gemm's exact FFMA (IEEE products, no TF32), staged
// through shared memory one chunk at a time.
#include <type_traits>

#include "async_tile.cuh"
#include "common.cuh"
#include "launch_utils.cuh"
#include "ptx.cuh"

namespace quietstar {
namespace {

constexpr float kBannedLogit = -1e10f;

struct FfmaLogitTiles {
  static constexpr int kBlockM = TileTraits<float>::kRows;
  static constexpr int kBlockV = TileTraits<float>::kRows;
  static constexpr int kBlockK = TileTraits<float>::kRows;
  static constexpr int kLd = kBlockK + TileTraits<float>::kPad;
  static constexpr int kLdZ = kBlockV + TileTraits<float>::kAccPad;
  __host__ __device__ static constexpr auto h() { return first_region<float>(kBlockM, kLd); }
  __host__ __device__ static constexpr auto w() { return after<float>(h(), kBlockV, kLd); }
  __host__ __device__ static constexpr auto z() { return after<float>(w(), kBlockM, kLdZ); }
  __host__ __device__ static constexpr int64_t bytes() { return z().end(); }
};

template <typename T>
struct MmaLogitTiles {
  static constexpr int kWarpRows = 16;  // the m of mma.m16n8k16: each warp owns one row band of the tile
  static constexpr int kBlockM = kWarpRows * kWarps;
  static constexpr int kBlockV = 128;
  static constexpr int kBlockK = 64;
  static constexpr int kStages = 2;
  static constexpr int kLdZ = kBlockV + 8;
  using HTile = PaddedTile<T, kBlockM, kBlockK>;
  using WTile = PaddedTile<T, kBlockV, kBlockK>;
  __host__ __device__ static constexpr auto h(int stage) {
    return SmemRegion<T>{stage * HTile::kBytes, HTile::kRows, HTile::kLd};
  }
  __host__ __device__ static constexpr auto w(int stage) {
    return SmemRegion<T>{kStages * HTile::kBytes + stage * WTile::kBytes, WTile::kRows, WTile::kLd};
  }
  __host__ __device__ static constexpr auto z() { return after<float>(w(kStages - 1), kBlockM, kLdZ); }
  __host__ __device__ static constexpr int64_t bytes() { return z().end(); }
  static_assert(HTile::kBytes % 128 == 0 && WTile::kBytes % 128 == 0, "stage buffers stay 128-byte aligned");
};

template <typename T>
using LogitTiles = std::conditional_t<std::is_same_v<T, float>, FfmaLogitTiles, MmaLogitTiles<T>>;

// fp32: z (BM x BV) = H[row0 : row0 + BM] @ W[v0 : v0 + BV]^T by block_gemm; rows and columns past the ends are 0.
__device__ void ffma_logit_tile(const LinearSoftmaxArgs& args, char* smem, int row0, int rows_in, int v0,
                                int cols_in) {
  using Tiles = FfmaLogitTiles;
  float* h_tile = Tiles::h().in(smem);
  float* w_tile = Tiles::w().in(smem);
  float* z = Tiles::z().in(smem);
  const float* h_rows = static_cast<const float*>(args.hidden_states) + int64_t(row0) * args.stride_hidden;
  const float* w_rows = static_cast<const float*>(args.weight) + int64_t(v0) * args.stride_weight;
  for (int k0 = 0; k0 < args.hidden; k0 += Tiles::kBlockK) {
    const int k_in = min(Tiles::kBlockK, args.hidden - k0);
    __syncthreads();  // earlier readers of the tiles are done
    load_tile<float, Tiles::kBlockM, Tiles::kBlockK>(h_tile, Tiles::kLd, h_rows + k0, args.stride_hidden, rows_in,
                                                     k_in);
    load_tile<float, Tiles::kBlockV, Tiles::kBlockK>(w_tile, Tiles::kLd, w_rows + k0, args.stride_weight, cols_in,
                                                     k_in);
    __syncthreads();
    block_gemm<float, Tiles::kBlockM, Tiles::kBlockV, Tiles::kBlockK, true>(h_tile, Tiles::kLd, w_tile, Tiles::kLd,
                                                                             z, Tiles::kLdZ, k0 > 0);
  }
  __syncthreads();
}

// Whether every row of every hidden chunk starts 16-byte aligned, as cp.async needs.
template <typename T>
__device__ __forceinline__ bool rows_allow_cp_async(const LinearSoftmaxArgs& args) {
  constexpr int kVector = 16 / sizeof(T);
  const bool pointers_aligned =
      reinterpret_cast<uintptr_t>(args.hidden_states) % 16 == 0 && reinterpret_cast<uintptr_t>(args.weight) % 16 == 0;
  return pointers_aligned && args.hidden % kVector == 0 && args.stride_hidden % kVector == 0 &&
         args.stride_weight % kVector == 0;
}

// fp16/bf16: the same z on tensor cores (see the header comment for the pipeline).
template <typename T>
__device__ void mma_logit_tile(const LinearSoftmaxArgs& args, char* smem, int row0, int rows_in, int v0,
                               int cols_in) {
  using Tiles = MmaLogitTiles<T>;
  using HTile = typename Tiles::HTile;
  using WTile = typename Tiles::WTile;
  constexpr int kNTiles = Tiles::kBlockV / 8;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const T* h_rows = static_cast<const T*>(args.hidden_states) + int64_t(row0) * args.stride_hidden;
  const T* w_rows = static_cast<const T*>(args.weight) + int64_t(v0) * args.stride_weight;
  const bool async_copies = rows_allow_cp_async<T>(args);
  const int num_chunks = ceil_div(args.hidden, Tiles::kBlockK);

  auto load_chunk = [&](int chunk) {
    const int k0 = chunk * Tiles::kBlockK;
    const int k_in = min(Tiles::kBlockK, args.hidden - k0);
    T* h_tile = Tiles::h(chunk % Tiles::kStages).in(smem);
    T* w_tile = Tiles::w(chunk % Tiles::kStages).in(smem);
    if (async_copies) {
      cp_async_tile<HTile>(h_tile, h_rows + k0, args.stride_hidden, rows_in, k_in);
      cp_async_tile<WTile>(w_tile, w_rows + k0, args.stride_weight, cols_in, k_in);
      ptx::cp_async_commit();
    } else {
      load_tile<T, HTile::kRows, HTile::kCols>(h_tile, HTile::kLd, h_rows + k0, args.stride_hidden, rows_in, k_in);
      load_tile<T, WTile::kRows, WTile::kCols>(w_tile, WTile::kLd, w_rows + k0, args.stride_weight, cols_in, k_in);
    }
  };

  float acc[kNTiles][4] = {};
  load_chunk(0);  // the barrier ending the previous tile freed both stages
  for (int chunk = 0; chunk < num_chunks; ++chunk) {
    ptx::cp_async_wait<0>();
    __syncthreads();  // chunk `chunk` is visible to all warps, and all are done with the other stage
    if (chunk + 1 < num_chunks) load_chunk(chunk + 1);
    const T* h_tile = Tiles::h(chunk % Tiles::kStages).in(smem);
    const T* w_tile = Tiles::w(chunk % Tiles::kStages).in(smem);
#pragma unroll
    for (int k = 0; k < Tiles::kBlockK; k += 16) {
      uint32_t a[4];
      ptx::ldmatrix_x4(a, x4_a_order<HTile>(h_tile, warp * Tiles::kWarpRows, k, lane));
#pragma unroll
      for (int n = 0; n < kNTiles; n += 2) {
        uint32_t b[4];  // b0, b1 of n-tile n, then of n-tile n + 1
        ptx::ldmatrix_x4(b, x4_b_order<WTile>(w_tile, n * 8, k, lane));
        const uint32_t b_even[2] = {b[0], b[1]};
        const uint32_t b_odd[2] = {b[2], b[3]};
        ptx::mma_m16n8k16<T>(acc[n], a, b_even);
        ptx::mma_m16n8k16<T>(acc[n + 1], a, b_odd);
      }
    }
  }

  // Accumulator layout: c0, c1 at (g, 2t..2t+1) and c2, c3 at (g + 8, 2t..2t+1) of each 16 x 8 n-tile.
  float* z = Tiles::z().in(smem);
  const int row = warp * Tiles::kWarpRows + lane / 4;
  const int column = 2 * (lane % 4);
#pragma unroll
  for (int n = 0; n < kNTiles; ++n) {
    *reinterpret_cast<float2*>(z + row * Tiles::kLdZ + n * 8 + column) = float2{acc[n][0], acc[n][1]};
    *reinterpret_cast<float2*>(z + (row + 8) * Tiles::kLdZ + n * 8 + column) = float2{acc[n][2], acc[n][3]};
  }
  __syncthreads();
}

// z (BM x BV, fp32, in LogitTiles<T>::z()) = H[row0 : row0 + BM] @ W[v0 : v0 + BV]^T; rows and columns past the
// ends are 0. Ends with a barrier: z is ready for every thread.
template <typename T>
__device__ __forceinline__ void logit_tile(const LinearSoftmaxArgs& args, char* smem, int row0, int rows_in, int v0,
                                           int cols_in) {
  if constexpr (std::is_same_v<T, float>) {
    ffma_logit_tile(args, smem, row0, rows_in, v0, cols_in);
  } else {
    mma_logit_tile<T>(args, smem, row0, rows_in, v0, cols_in);
  }
}

__device__ __forceinline__ float masked_logit(const LinearSoftmaxArgs& args, float z, int column) {
  return args.banned != nullptr && args.banned[column] != 0 ? kBannedLogit : z;
}

// Philox4x32-10 (Salmon et al. 2011): counter-based, so noise for (row, column) needs no state.
__device__ __forceinline__ uint32_t philox_first_word(uint64_t counter, uint64_t seed) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0u, c3 = 0u;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// Gumbel(0, 1) = -log(Exp(1)) = -log(-log(U)), U uniform in the open interval (0, 1).
__device__ __forceinline__ float gumbel_noise(const LinearSoftmaxArgs& args, int row, int column, uint64_t seed) {
  if (args.noise != nullptr) return args.noise[int64_t(row) * args.stride_noise + column];
  const uint64_t offset = uint64_t(row) * uint64_t(args.vocab) + uint64_t(column);
  // 23 bits: (k + 0.5) * 2^-23 is exact in fp32, so U stays in [2^-24, 1 - 2^-24] and the noise finite (with 24
  // bits the top value would round to 1.0f and give +inf).
  const float uniform = (float(philox_first_word(offset, seed) >> 9) + 0.5f) * (1.0f / 8388608.0f);
  return -logf(-logf(uniform));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) linear_softmax_fwd_kernel(const LinearSoftmaxArgs args) {
  using Tiles = LogitTiles<T>;
  constexpr int BM = Tiles::kBlockM;
  constexpr int BV = Tiles::kBlockV;
  QUIETSTAR_DYNAMIC_SMEM(smem);
  __shared__ float run_max[BM], run_sum[BM], picked[BM], best[BM];
  __shared__ int32_t best_index[BM];
  const float* z = Tiles::z().in(smem);

  const int row0 = blockIdx.x * BM;
  const int rows_in = min(BM, args.num_rows - row0);
  const int split = blockIdx.y;
  const int v_lo = split * args.vocab_per_split;
  const int v_hi = min(args.vocab, v_lo + args.vocab_per_split);
  const bool sample = args.targets == nullptr;
  const uint64_t seed = sample && args.noise == nullptr ? uint64_t(*args.seed) : 0u;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  for (int r = threadIdx.x; r < BM; r += blockDim.x) {
    run_max[r] = -INFINITY;
    run_sum[r] = 0.f;
    picked[r] = 0.f;
    best[r] = -INFINITY;
    best_index[r] = 0;
  }

  for (int v0 = v_lo; v0 < v_hi; v0 += BV) {
    logit_tile<T>(args, smem, row0, rows_in, v0, min(BV, v_hi - v0));
    for (int r = warp; r < rows_in; r += kWarps) {
      const int row = row0 + r;
      float logit[BV / kWarpSize];
      float tile_max = -INFINITY;
#pragma unroll
      for (int t = 0; t < BV / kWarpSize; ++t) {
        const int column = v0 + lane + t * kWarpSize;
        logit[t] = column < v_hi ? masked_logit(args, z[r * Tiles::kLdZ + lane + t * kWarpSize], column) : 0.f;
        if (column < v_hi) tile_max = fmaxf(tile_max, logit[t] * args.inv_t);
      }
      const float new_max = fmaxf(run_max[r], warp_max(tile_max));
      float exp_sum = 0.f;
      float lane_pick = 0.f;
      float lane_best = -INFINITY;
      int lane_index = 0;
      const int64_t target = sample ? -1 : args.targets[row];
#pragma unroll
      for (int t = 0; t < BV / kWarpSize; ++t) {
        const int column = v0 + lane + t * kWarpSize;
        if (column >= v_hi) continue;
        exp_sum += expf(logit[t] * args.inv_t - new_max);
        if (sample) {
          const float score = logit[t] * args.sample_scale + gumbel_noise(args, row, column, seed);
          if (score > lane_best) {  // strict: the lower id wins ties, as torch.argmax
            lane_best = score;
            lane_index = column;
            lane_pick = logit[t];
          }
        } else if (column == target) {
          lane_pick = logit[t];
        }
      }
      exp_sum = warp_sum(exp_sum);
      if (sample) {
#pragma unroll
        for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
          const float other_best = __shfl_xor_sync(0xffffffffu, lane_best, offset);
          const int other_index = __shfl_xor_sync(0xffffffffu, lane_index, offset);
          const float other_pick = __shfl_xor_sync(0xffffffffu, lane_pick, offset);
          if (other_best > lane_best || (other_best == lane_best && other_index < lane_index)) {
            lane_best = other_best;
            lane_index = other_index;
            lane_pick = other_pick;
          }
        }
      } else {
        lane_pick = warp_sum(lane_pick);
      }
      // Every lane read run_max[r] above; lane 0 overwrites it below. The shuffles converge the warp but do not
      // order shared memory (racecheck on the H200 flagged this read/write pair), so a warp barrier does.
      __syncwarp();
      if (lane == 0) {
        run_sum[r] = run_sum[r] * expf(run_max[r] - new_max) + exp_sum;
        run_max[r] = new_max;
        if (!sample) {
          picked[r] += lane_pick;
        } else if (lane_best > best[r]) {
          best[r] = lane_best;
          best_index[r] = lane_index;
          picked[r] = lane_pick;
        }
      }
    }
  }
  __syncthreads();
  for (int r = threadIdx.x; r < rows_in; r += blockDim.x) {
    const int64_t part = int64_t(row0 + r) * args.num_splits + split;
    args.part_max[part] = run_max[r];
    args.part_sum[part] = run_sum[r];
    args.part_pick[part] = picked[r];
    if (sample) {
      args.part_best[part] = best[r];
      args.part_index[part] = best_index[r];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) linear_softmax_grad_kernel(const LinearSoftmaxArgs args) {
  using Tiles = LogitTiles<T>;
  QUIETSTAR_DYNAMIC_SMEM(smem);
  const float* z = Tiles::z().in(smem);
  const int row0 = blockIdx.x * Tiles::kBlockM;
  const int v0 = blockIdx.y * Tiles::kBlockV;
  const int rows_in = min(Tiles::kBlockM, args.num_rows - row0);
  const int cols_in = min(Tiles::kBlockV, args.vocab - v0);
  logit_tile<T>(args, smem, row0, rows_in, v0, cols_in);
  T* grad = static_cast<T*>(args.grad_logits);
  for (int index = threadIdx.x; index < rows_in * Tiles::kBlockV; index += blockDim.x) {
    const int r = index / Tiles::kBlockV;
    const int c = index % Tiles::kBlockV;
    if (c >= cols_in) continue;
    const int row = row0 + r;
    const int column = v0 + c;
    const float logit = masked_logit(args, z[r * Tiles::kLdZ + c], column);
    const float prob = expf(logit * args.inv_t - args.lse[row]);
    const float onehot = args.targets[row] == column ? 1.f : 0.f;
    grad[int64_t(row) * args.vocab + column] = from_float<T>(args.coef[row] * args.inv_t * (prob - onehot));
  }
}

}  // namespace

int linear_softmax_block_rows(ScalarKind kind) {
  int rows = 0;
  dispatch_kind(kind, [&](auto tag) { rows = LogitTiles<typename decltype(tag)::type>::kBlockM; });
  return rows;
}

int linear_softmax_block_vocab(ScalarKind kind) {
  int columns = 0;
  dispatch_kind(kind, [&](auto tag) { columns = LogitTiles<typename decltype(tag)::type>::kBlockV; });
  return columns;
}

int multiprocessor_count() {
#ifdef QUIETSTAR_EMULATION
  return 2;  // few "SMs": small test problems still split the vocabulary and exercise the merge
#else
  return device_attribute(cudaDevAttrMultiProcessorCount, "querying the SM count");
#endif
}

void launch_linear_softmax_forward(const LinearSoftmaxArgs& args) {
  dispatch_kind(args.kind, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Tiles = LogitTiles<T>;
    auto kernel = linear_softmax_fwd_kernel<T>;
    allow_shared_memory(kernel, Tiles::bytes(), "linear_softmax_fwd");
    const int64_t row_blocks = ceil_div(args.num_rows, Tiles::kBlockM);
    check_grid(row_blocks, args.num_splits, "linear_softmax_fwd");
    launch_kernel("linear_softmax_fwd", kernel, dim3(unsigned(row_blocks), unsigned(args.num_splits)), kThreads,
                  Tiles::bytes(), args.stream, args);
  });
}

void launch_linear_softmax_grad(const LinearSoftmaxArgs& args) {
  dispatch_kind(args.kind, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Tiles = LogitTiles<T>;
    auto kernel = linear_softmax_grad_kernel<T>;
    allow_shared_memory(kernel, Tiles::bytes(), "linear_softmax_grad");
    const int64_t row_blocks = ceil_div(args.num_rows, Tiles::kBlockM);
    const int64_t vocab_blocks = ceil_div(args.vocab, Tiles::kBlockV);
    check_grid(row_blocks, vocab_blocks, "linear_softmax_grad");
    launch_kernel("linear_softmax_grad", kernel, dim3(unsigned(row_blocks), unsigned(vocab_blocks)), kThreads,
                  Tiles::bytes(), args.stream, args);
  });
}

}  // namespace quietstar
