// Row-wise work in the mma fragment layout, for the own-stream keys: query r sees only stream key r of its tile,
// so its score is one dot product of two rows, never a dense mma.
//
// A lane holds, of its rows g (h = 0) and g + 8 (h = 1), the columns 8 dn + 2t and 8 dn + 2t + 1 for every dn:
// in an accumulator acc[dn][2h], acc[dn][2h + 1]; in an A fragment of k-step kk = dn / 2, register h + 2 (dn % 2).
// Partial sums over those columns, reduced over the lane's quad, give whole-row dot products.
#pragma once

#include <cstdint>

#include "ptx.cuh"

namespace quietstar {

template <typename T>
__device__ __forceinline__ float2 shared_pair(const T* row, int column) {
  return ptx::unpack_pair<T>(ptx::ld_shared_b32(row + column));
}

// This lane's part of (A-fragment row h) . row, row a D-element row in shared memory.
template <typename T, int D>
__device__ __forceinline__ float fragment_row_dot(const uint32_t (&fragment)[D / 16][4], int h, const T* row, int t) {
  float dot = 0.f;
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) {
    const float2 x = ptx::unpack_pair<T>(fragment[dn / 2][h + 2 * (dn % 2)]);
    const float2 y = shared_pair(row, dn * 8 + 2 * t);
    dot = fmaf(x.x, y.x, fmaf(x.y, y.y, dot));
  }
  return dot;
}

// This lane's part of a . b for two D-element rows in shared memory.
template <typename T, int D>
__device__ __forceinline__ float shared_row_dot(const T* a, const T* b, int t) {
  float dot = 0.f;
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) {
    const float2 x = shared_pair(a, dn * 8 + 2 * t);
    const float2 y = shared_pair(b, dn * 8 + 2 * t);
    dot = fmaf(x.x, y.x, fmaf(x.y, y.y, dot));
  }
  return dot;
}

// acc row h += weight * row (this lane's columns).
template <typename T, int D>
__device__ __forceinline__ void accumulate_row(float (&acc)[D / 8][4], int h, float weight, const T* row, int t) {
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) {
    const float2 y = shared_pair(row, dn * 8 + 2 * t);
    acc[dn][2 * h] = fmaf(weight, y.x, acc[dn][2 * h]);
    acc[dn][2 * h + 1] = fmaf(weight, y.y, acc[dn][2 * h + 1]);
  }
}

// Writes acc row h times `scale` to a global row as 16-bit pairs, columns below `columns` (a multiple of 8).
template <typename T, int D>
__device__ __forceinline__ void store_row(T* row, const float (&acc)[D / 8][4], int h, float scale, int columns,
                                          int t) {
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) {
    const int column = dn * 8 + 2 * t;
    if (column < columns) {
      *reinterpret_cast<uint32_t*>(row + column) =
          ptx::pack_pair<T>(acc[dn][2 * h] * scale, acc[dn][2 * h + 1] * scale);
    }
  }
}

}  // namespace quietstar
