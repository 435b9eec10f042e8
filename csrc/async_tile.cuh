// Shared-memory tiles of the tensor-core kernels: 16-bit, row-major, rows padded by 16 bytes so that the eight
// row addresses of an ldmatrix (and the eight 16-byte chunks of a cp.async phase) fall in distinct banks; filled
// from global memory with cp.async (16-byte chunks, zero-filled past the valid rows and columns).
#pragma once

#include <cstdint>

#include "common.cuh"
#include "ptx.cuh"

namespace quietstar {

// A ROWS x COLS tile of T with leading dimension kLd (elements).
template <typename T, int ROWS, int COLS>
struct PaddedTile {
  static_assert(sizeof(T) == 2, "tensor-core tiles hold 16-bit elements");
  static_assert(COLS % 16 == 0 && ROWS % 8 == 0, "tiles are whole 8 x 16 blocks");
  static constexpr int kRows = ROWS;
  static constexpr int kCols = COLS;
  static constexpr int kLd = COLS + 8;
  static constexpr int kChunksPerRow = COLS / 8;  // 16-byte chunks
  static constexpr int64_t kBytes = int64_t(ROWS) * kLd * 2;
};

// Issues the cp.async copies of rows [0, rows_in) x columns [0, cols_in) of `src` (row stride `stride` elements;
// `src` and `stride` 16-byte aligned, cols_in a multiple of 8) into `tile`; the rest of its first `rows` rows
// becomes zeros. The caller commits the group and waits for it before reading the tile.
template <typename Tile, typename T>
__device__ __forceinline__ void cp_async_tile(T* tile, const T* src, int64_t stride, int rows_in, int cols_in,
                                              int rows = Tile::kRows) {
  for (int chunk = threadIdx.x; chunk < rows * Tile::kChunksPerRow; chunk += blockDim.x) {
    const int row = chunk / Tile::kChunksPerRow;
    const int column = chunk % Tile::kChunksPerRow * 8;
    const bool valid = row < rows_in && column < cols_in;
    // An empty copy still needs an aligned source address: the tile's first element.
    const T* from = valid ? src + int64_t(row) * stride + column : src;
    ptx::cp_async_16(tile + row * Tile::kLd + column, from, valid ? 16 : 0);
  }
}

// Row address lane `lane` gives ldmatrix.x4 to load the 16 x 16 block at (row0, col0) of a tile as the four 8 x 8
// matrices (rows 0-7 | 8-15) x (columns 0-7 | 8-15), in that order: the A-fragment order a0..a3. With .trans on a
// k-major B tile (V in P V: rows are k) the same addresses give b0, b1 of the n-tile at col0 and of col0 + 8.
template <typename Tile, typename T>
__device__ __forceinline__ const T* x4_a_order(const T* tile, int row0, int col0, int lane) {
  return tile + (row0 + lane % 16) * Tile::kLd + col0 + (lane / 16) * 8;
}

// Row address for ldmatrix.x4 of the 16 x 16 block at (row0, col0) as (rows 0-7, columns 0-7), (rows 0-7, columns
// 8-15), (rows 8-15, columns 0-7), (rows 8-15, columns 8-15): for B operands stored n-major (K in Q K^T), where it
// gives b0, b1 of the n-tile at row0 and b0, b1 of the n-tile at row0 + 8.
template <typename Tile, typename T>
__device__ __forceinline__ const T* x4_b_order(const T* tile, int row0, int col0, int lane) {
  return tile + (row0 + (lane / 16) * 8 + lane % 8) * Tile::kLd + col0 + ((lane / 8) % 2) * 8;
}

// The A fragments of the 16 rows from row0 of a tile, all COLS / 16 k-steps.
template <typename Tile, typename T>
__device__ __forceinline__ void load_a_fragments(uint32_t (&fragment)[Tile::kCols / 16][4], const T* tile, int row0,
                                                 int lane) {
#pragma unroll
  for (int kk = 0; kk < Tile::kCols / 16; ++kk) ptx::ldmatrix_x4(fragment[kk], x4_a_order<Tile>(tile, row0, kk * 16, lane));
}

// The two-stage pipeline step before computing tile `index` of `count`: the copy of tile index + 1 goes in flight
// (issued by `load(index + 1)` into the other stage, which the previous iteration finished with), tile `index`
// lands, and the block waits until every thread's copies have.
template <typename Load>
__device__ __forceinline__ void next_pipeline_stage(int index, int count, Load&& load) {
  if (index + 1 < count) {
    load(index + 1);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
  } else {
    ptx::cp_async_wait<0>();
  }
  __syncthreads();
}

}  // namespace quietstar
