// Device building blocks shared by the CUDA kernels: element types, warp reductions, global->shared tile copies
// with 64-bit offsets, and the block-wide FFMA GEMM on shared-memory tiles of the exact (CUDA-core) kernels.
//
// The tensor-core kernels build on ptx.cuh (mma.sync, ldmatrix, cp.async) and async_tile.cuh instead; the FFMA
// GEMM here is the fp32 contract (IEEE products, like torch's default matmul without TF32) and the path of 16-bit
// inputs whose layout cp.async cannot copy.
#pragma once

#ifdef QUIETSTAR_EMULATION
#include "emulation/cuda_emulation.h"
#define QUIETSTAR_DYNAMIC_SMEM(name) char* name = ::quietstar_emulation::dynamic_shared_memory()
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define QUIETSTAR_DYNAMIC_SMEM(name) extern __shared__ __align__(128) char name[]
#endif

#include <cstdint>
#include <type_traits>

namespace quietstar {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kWarpSize = 32;
constexpr int kThreads = 128;  // four warps per block in every tiled kernel
constexpr int kWarps = kThreads / kWarpSize;

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Tile geometry of the FFMA kernels per element type: an odd padding (in 4-byte words) makes column walks
// conflict-free; 16-bit tiles keep 16-byte aligned rows for the vector loads.
template <typename T>
struct TileTraits {
  static constexpr int kPad = 8;
  static constexpr int kAccPad = 1;
  static constexpr int kRows = 64;  // query rows per block (and vocabulary columns in the LM-head kernels)
};
template <>
struct TileTraits<float> {
  static constexpr int kPad = 1;
  static constexpr int kAccPad = 1;
  static constexpr int kRows = 32;
};

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ constexpr int64_t align_bytes(int64_t bytes) { return (bytes + 127) / 128 * 128; }

// A region of dynamic shared memory: rows x ld elements of type U, 128-byte aligned, placed after `previous`.
template <typename U>
struct SmemRegion {
  int64_t offset;
  int64_t rows;
  int64_t ld;
  __host__ __device__ constexpr int64_t end() const { return offset + align_bytes(rows * ld * int64_t(sizeof(U))); }
  __device__ U* in(char* smem) const { return reinterpret_cast<U*>(smem + offset); }
};

template <typename U, typename Previous>
__host__ __device__ constexpr SmemRegion<U> after(Previous previous, int64_t rows, int64_t ld) {
  return SmemRegion<U>{previous.end(), rows, ld};
}

template <typename U>
__host__ __device__ constexpr SmemRegion<U> first_region(int64_t rows, int64_t ld) {
  return SmemRegion<U>{0, rows, ld};
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Copies a ROWS x COLS tile whose first row starts at `src` (row stride `stride` elements) into shared memory
// (leading dimension `ld`); rows >= `rows_in` and columns >= `cols_in` become zeros, so padded lanes of a GEMM
// contribute nothing (and never NaN from stale shared memory).
template <typename T, int ROWS, int COLS>
__device__ __forceinline__ void load_tile(T* dst, int ld, const T* src, int64_t stride, int rows_in, int cols_in) {
  // Whole rows at 16-byte alignment (16-bit tiles of full head dims and hidden chunks) move as 16-byte vectors.
  constexpr int kVector = 16 / sizeof(T);
  const bool vectorizable = COLS % kVector == 0 && cols_in == COLS && ld % kVector == 0 && stride % kVector == 0 &&
                            reinterpret_cast<uintptr_t>(src) % 16 == 0;
  if (vectorizable) {
    for (int index = threadIdx.x; index < ROWS * (COLS / kVector); index += blockDim.x) {
      const int r = index / (COLS / kVector);
      const int c = index % (COLS / kVector) * kVector;
      const uint4 zero{0u, 0u, 0u, 0u};
      *reinterpret_cast<uint4*>(dst + r * ld + c) =
          r < rows_in ? *reinterpret_cast<const uint4*>(src + int64_t(r) * stride + c) : zero;
    }
    return;
  }
  for (int index = threadIdx.x; index < ROWS * COLS; index += blockDim.x) {
    const int r = index / COLS;
    const int c = index % COLS;
    dst[r * ld + c] = (r < rows_in && c < cols_in) ? src[int64_t(r) * stride + c] : from_float<T>(0.f);
  }
}

template <int ROWS, int COLS>
__device__ __forceinline__ void zero_tile(float* dst, int ld) {
  for (int index = threadIdx.x; index < ROWS * COLS; index += blockDim.x) dst[(index / COLS) * ld + index % COLS] = 0.f;
}

// C (M x N, fp32, row-major, ldc) = [C +] A (M x K, row-major, lda) * B', where B' = B^T for B stored N x K
// row-major (B_TRANSPOSED, "NT") or B' = B for B stored K x N row-major ("NN"), with fp32 FMAs in k order. Threads
// share the output elements; callers synchronise before and after.
template <typename T, int M, int N, int K, bool B_TRANSPOSED>
__device__ __forceinline__ void block_gemm(const T* A, int lda, const T* B, int ldb, float* C, int ldc,
                                           bool accumulate) {
  for (int index = threadIdx.x; index < M * N; index += blockDim.x) {
    const int i = index / N;
    const int j = index % N;
    float sum = accumulate ? C[i * ldc + j] : 0.f;
#pragma unroll 8
    for (int k = 0; k < K; ++k) {
      const float b = to_float(B_TRANSPOSED ? B[j * ldb + k] : B[k * ldb + j]);
      sum = fmaf(to_float(A[i * lda + k]), b, sum);
    }
    C[i * ldc + j] = sum;
  }
}

}  // namespace quietstar
