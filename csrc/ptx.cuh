// Thin device wrappers for the PTX instructions of the tensor-core kernels; kernels call only these.
//
//   mma_m16n8k16   D (16 x 8, fp32) += A (16 x 16) * B (16 x 8), fp16 or bf16 inputs
//   ldmatrix_*     one, two or four 8 x 8 16-bit matrices from shared memory into fragments (optionally transposed)
//   cp_async_16    16-byte global -> shared copy that bypasses registers, zero-filling past `src_bytes`;
//                  cp_async_commit / cp_async_wait<N> close a group and wait until at most N groups are in flight
//   ld_shared_b32  a 32-bit load from a tile filled by cp.async
//   shfl_xor       warp butterfly exchange
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with g = lane / 4 and t = lane % 4:
//   A  a[0] = (g, 2t..2t+1)  a[1] = (g+8, 2t..2t+1)  a[2] = (g, 2t+8..2t+9)  a[3] = (g+8, 2t+8..2t+9)
//   B  b[0] = (2t..2t+1, g)  b[1] = (2t+8..2t+9, g)                                  (row k, column n)
//   C  c[0..1] = (g, 2t..2t+1)  c[2..3] = (g+8, 2t..2t+1)
// A 32-bit register holds two 16-bit elements, the lower-indexed one in the low half. ldmatrix: lanes 8m..8m+7
// give the row addresses of matrix m; lane l receives row l/4, columns 2(l%4)..2(l%4)+1 of each matrix (with
// .trans: rows 2(l%4)..2(l%4)+1 of column l/4). Under QUIETSTAR_EMULATION these are emulated lane by lane with the
// same mapping (emulation/ptx_emulation.h), so a kernel that misreads a fragment fails on the CPU.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#ifdef QUIETSTAR_EMULATION
#include "emulation/ptx_emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace quietstar::ptx {

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    static_assert(std::is_same_v<T, __half>, "mma_m16n8k16 takes __half or __nv_bfloat16");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

__device__ __forceinline__ void ldmatrix_x1(uint32_t& r, const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r) : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t& r, const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r) : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}

// Copies 16 bytes from `src` (global, 16-byte aligned) to `dst` (shared, 16-byte aligned); only the first
// `src_bytes` (0..16) are read, the rest of the 16 become zeros. Visible after the matching cp_async_wait.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(src_bytes));
}
// The memory clobbers keep the compiler from moving shared-memory reads of the copied data above the wait.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// A 32-bit load from shared memory, for tiles filled by cp.async (the emulation checks it for races).
__device__ __forceinline__ uint32_t ld_shared_b32(const void* pointer) {
  return *reinterpret_cast<const uint32_t*>(pointer);
}

__device__ __forceinline__ float shfl_xor(float value, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, value, lane_mask);
}

}  // namespace quietstar::ptx
#endif

namespace quietstar::ptx {

// Two floats rounded to T and packed into one fragment register (`low` in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float low, float high) {
  T pair[2];
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    pair[0] = __float2bfloat16_rn(low);
    pair[1] = __float2bfloat16_rn(high);
  } else {
    pair[0] = __float2half_rn(low);
    pair[1] = __float2half_rn(high);
  }
  uint32_t packed;
  memcpy(&packed, pair, sizeof(packed));
  return packed;
}

// The two elements of a fragment register as floats.
template <typename T>
__device__ __forceinline__ float2 unpack_pair(uint32_t packed) {
  T pair[2];
  memcpy(pair, &packed, sizeof(packed));
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return float2{__bfloat162float(pair[0]), __bfloat162float(pair[1])};
  } else {
    return float2{__half2float(pair[0]), __half2float(pair[1])};
  }
}

// Reductions over the four lanes of a quad (the lanes that share a row of an mma fragment).
__device__ __forceinline__ float quad_sum(float x) {
  x += shfl_xor(x, 1);
  return x + shfl_xor(x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, shfl_xor(x, 1));
  return fmaxf(x, shfl_xor(x, 2));
}

}  // namespace quietstar::ptx
