// Warp-level products on mma fragments, shared by the tensor-core attention kernels. A warp holds a 16-row A
// operand as register fragments (one per 16-wide k-step) and multiplies it by a shared-memory tile:
//   mma_n_major   B^T stored row by row (row n holds B's column n: K in Q K^T, V in dO V^T)
//   mma_k_major   B stored row by row (row k holds B's row k: V in P V, K in dS K, dO in P^T dO, Q in dS^T Q)
// and accumulator_a_fragments turns a 16 x 16k fp32 accumulator into the A fragments of the next product.
#pragma once

#include <cstdint>

#include "async_tile.cuh"
#include "ptx.cuh"

namespace quietstar {

// acc (16 x 8 N_TILES) += A (16 x 16 K_STEPS) * B, with B^T's rows [0, 8 N_TILES) in `tile`.
template <typename Tile, typename T, int K_STEPS, int N_TILES>
__device__ __forceinline__ void mma_n_major(float (&acc)[N_TILES][4], const uint32_t (&a)[K_STEPS][4], const T* tile,
                                            int lane) {
#pragma unroll
  for (int kk = 0; kk < K_STEPS; ++kk) {
#pragma unroll
    for (int j = 0; j < N_TILES / 2; ++j) {
      uint32_t b[4];
      ptx::ldmatrix_x4(b, x4_b_order<Tile>(tile, j * 16, kk * 16, lane));
      ptx::mma_m16n8k16<T>(acc[2 * j], a[kk], {b[0], b[1]});
      ptx::mma_m16n8k16<T>(acc[2 * j + 1], a[kk], {b[2], b[3]});
    }
  }
}

// acc (16 x 8 N_TILES) += A (16 x 16 K_STEPS) * B, with B's rows [0, 16 K_STEPS) in `tile`.
template <typename Tile, typename T, int K_STEPS, int N_TILES>
__device__ __forceinline__ void mma_k_major(float (&acc)[N_TILES][4], const uint32_t (&a)[K_STEPS][4], const T* tile,
                                            int lane) {
#pragma unroll
  for (int kk = 0; kk < K_STEPS; ++kk) {
#pragma unroll
    for (int dn = 0; dn < N_TILES / 2; ++dn) {
      uint32_t b[4];
      ptx::ldmatrix_x4_trans(b, x4_a_order<Tile>(tile, kk * 16, dn * 16, lane));
      ptx::mma_m16n8k16<T>(acc[2 * dn], a[kk], {b[0], b[1]});
      ptx::mma_m16n8k16<T>(acc[2 * dn + 1], a[kk], {b[2], b[3]});
    }
  }
}

// The accumulator fragments of n-tiles 2kk and 2kk + 1 are exactly the A fragment of k-step kk: rounded to T
// and packed, with no shared-memory round trip.
template <typename T, int N_TILES>
__device__ __forceinline__ void accumulator_a_fragments(uint32_t (&a)[N_TILES / 2][4],
                                                        const float (&acc)[N_TILES][4]) {
#pragma unroll
  for (int jt = 0; jt < N_TILES; ++jt) {
    a[jt / 2][2 * (jt % 2)] = ptx::pack_pair<T>(acc[jt][0], acc[jt][1]);
    a[jt / 2][2 * (jt % 2) + 1] = ptx::pack_pair<T>(acc[jt][2], acc[jt][3]);
  }
}

}  // namespace quietstar
