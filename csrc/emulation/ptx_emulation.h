// CPU emulation of the PTX wrappers of csrc/ptx.cuh, exact to the fragment layouts of the PTX ISA.
//
// Warp-collective instructions (mma.sync, ldmatrix) exchange what each lane holds through a per-warp buffer: every
// lane publishes its registers (or row address), waits at the warp barrier, then computes its own result from the
// other lanes' words with the ISA's lane-to-element mapping. A kernel that puts an element in the wrong register
// or lane therefore computes a wrong result here, as on a GPU. The exchange buffer has two halves used
// alternately, so one barrier per instruction suffices: a lane can overwrite a half only after every lane has
// passed the next instruction's barrier, i.e. after all of them have read it.
//
// cp.async copies are queued per thread and land in shared memory only when cp_async_wait retires their group,
// so reading a tile before its wait sees the NaN poison (or the previous tile). Misuse that is undefined on a GPU
// (ldmatrix or a cp.async destination outside shared memory, misaligned addresses, a thread exiting with copies in
// flight) makes the launch throw.
//
// A race check, independent of the fibers' deterministic order, covers the tensor-core pipelines: per 16-byte
// chunk of shared memory it records cp.async copies in flight and landed, and ldmatrix reads, with the epoch
// (count of __syncthreads) they happened in. ldmatrix is a warp-collective read, so ordering inside a warp is by
// program order, and across warps only by a barrier. The launch throws when an ldmatrix reads a chunk that a
// thread of another warp landed in the same epoch, or that any other thread's copy is still writing (read after
// write), and when a thread issues a copy into a chunk another warp read in the same epoch or another thread is
// still copying into (write after read / write). Loads through ld_shared_b32 are tracked like ldmatrix, ordered
// only after the loading thread's own copies; plain C++ loads and stores of shared memory are not tracked.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "cuda_emulation.h"

namespace quietstar_emulation {

inline void report(const std::string& message) {
  if (current->error.empty()) current->error = message;
}

inline bool in_shared_memory(const void* pointer, size_t bytes) {
  const char* p = static_cast<const char*>(pointer);
  return p >= current->shared_memory && p + bytes <= current->shared_memory + current->shared_bytes;
}

inline bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

// The words every lane of this warp published for the current collective instruction.
class WarpWords {
 public:
  WarpWords(const uint64_t* base, unsigned stride) : base_(base), stride_(stride) {}
  uint64_t operator()(unsigned lane, int index) const { return base_[lane * stride_ + index]; }

 private:
  const uint64_t* base_;
  unsigned stride_;
};

inline WarpWords warp_exchange(const uint64_t* words, int count) {
  Fiber& fiber = this_fiber();
  const unsigned thread = fiber.thread_index.x;
  const unsigned parity = fiber.exchange_parity;
  fiber.exchange_parity ^= 1u;
  std::copy(words, words + count, &current->exchange[(size_t(thread) * 2 + parity) * kExchangeWords]);
  wait(this_warp_barrier());
  const unsigned warp_base = thread / kWarpSize * kWarpSize;
  return WarpWords(&current->exchange[(size_t(warp_base) * 2 + parity) * kExchangeWords], 2 * kExchangeWords);
}

inline unsigned this_lane() { return this_fiber().thread_index.x % kWarpSize; }

inline uint16_t low_half(uint64_t word) { return uint16_t(word & 0xffffu); }
inline uint16_t high_half(uint64_t word) { return uint16_t((word >> 16) & 0xffffu); }

template <typename T>
float element_of(uint16_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(bits));
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(value);
  } else {
    return __half2float(value);
  }
}

// Element `which` (0 = low, 1 = high) of a 32-bit fragment register.
template <typename T>
float fragment_element(uint64_t word, int which) {
  return element_of<T>(which == 0 ? low_half(word) : high_half(word));
}

inline uint64_t epoch() { return current->block_barrier.generation; }

inline ChunkAccess& chunk_at(const void* pointer) {
  return current->chunk_access[size_t(static_cast<const char*>(pointer) - current->shared_memory) / 16];
}

inline int warp_of(int thread) { return thread / kWarpSize; }

// A read of a 16-byte chunk by `reader`: an ldmatrix (warp-collective: the reader's warp is ordered after its own
// lanes' earlier copies) or a thread's own load (ordered only after its own copies).
inline void check_shared_read(const void* pointer, int reader, bool warp_collective) {
  ChunkAccess& chunk = chunk_at(pointer);
  const bool in_flight = chunk.copy_in_flight_by != ChunkAccess::kNobody && chunk.copy_in_flight_by != reader;
  const bool ordered_writer = warp_collective ? warp_of(chunk.landed_by) == warp_of(reader) : chunk.landed_by == reader;
  const bool unordered = chunk.landed_by != ChunkAccess::kNobody && !ordered_writer && chunk.landed_epoch == epoch();
  if (in_flight || unordered) {
    report(std::string("race: ") + (warp_collective ? "ldmatrix" : "a load") + " reads shared memory " +
           (in_flight ? "another thread's cp.async is still writing"
                      : "another thread's cp.async wrote with no __syncthreads in between"));
  }
  const int warp = warp_of(reader);
  if (chunk.read_epoch != epoch()) {
    chunk.read_epoch = epoch();
    chunk.read_by = warp;
  } else if (chunk.read_by != warp) {
    chunk.read_by = ChunkAccess::kSeveral;
  }
}

inline void check_copy_issue(const void* dst, int writer) {
  ChunkAccess& chunk = chunk_at(dst);
  if (chunk.read_epoch == epoch() && chunk.read_by != warp_of(writer)) {
    report("race: cp.async into shared memory another warp read with no __syncthreads in between");
  }
  if (chunk.copy_in_flight_by != ChunkAccess::kNobody && chunk.copy_in_flight_by != writer) {
    report("race: two threads' cp.async copies into the same shared memory are in flight");
  }
  chunk.copy_in_flight_by = writer;
}

inline void land_copy(const AsyncCopy& copy, int writer) {
  std::memcpy(copy.dst, copy.src, size_t(copy.src_bytes));
  std::memset(static_cast<char*>(copy.dst) + copy.src_bytes, 0, size_t(16 - copy.src_bytes));
  ChunkAccess& chunk = chunk_at(copy.dst);
  chunk.copy_in_flight_by = ChunkAccess::kNobody;
  chunk.landed_by = writer;
  chunk.landed_epoch = epoch();
}

// ldmatrix: each lane that supplies a row address (lanes below 8 * COUNT) reads its 16-byte row at the
// instruction, before the warp barrier, and publishes it; every lane then assembles its registers from the
// published rows. (Reading lazily after the barrier would let a lane that finished early overwrite a row before
// the others read it, which the hardware's collective read never sees.)
template <int COUNT, bool TRANSPOSED>
void ldmatrix(uint32_t* registers, const void* row) {
  const unsigned lane = this_lane();
  uint64_t published[2] = {0, 0};
  if (lane < 8u * COUNT) {
    if (!in_shared_memory(row, 16) || !aligned16(row)) {
      report("ldmatrix row address outside shared memory or not 16-byte aligned");
    } else {
      check_shared_read(row, int(this_fiber().thread_index.x), true);
      std::memcpy(published, row, 16);
    }
  }
  const WarpWords lanes = warp_exchange(published, 2);
  auto element = [&](unsigned row_lane, unsigned column) {  // column 0..7 of the row lane `row_lane` read
    return uint16_t(lanes(row_lane, int(column / 4)) >> (16 * (column % 4)));
  };
  for (int m = 0; m < COUNT; ++m) {
    uint16_t low, high;
    if (TRANSPOSED) {  // rows 2(l%4), 2(l%4)+1 of column l/4
      low = element(8 * m + 2 * (lane % 4), lane / 4);
      high = element(8 * m + 2 * (lane % 4) + 1, lane / 4);
    } else {  // row l/4, columns 2(l%4), 2(l%4)+1
      low = element(8 * m + lane / 4, 2 * (lane % 4));
      high = element(8 * m + lane / 4, 2 * (lane % 4) + 1);
    }
    registers[m] = uint32_t(low) | (uint32_t(high) << 16);
  }
}

}  // namespace quietstar_emulation

namespace quietstar::ptx {

template <typename T>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  using namespace ::quietstar_emulation;
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "mma_m16n8k16: 16-bit inputs");
  const uint64_t words[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  const WarpWords lanes = warp_exchange(words, 6);
  const unsigned lane = this_lane();
  const int g = int(lane / 4), t = int(lane % 4);
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e / 2);
    const int column = 2 * t + e % 2;
    float sum = d[e];
    for (int k = 0; k < 16; ++k) {
      // A (row, k): lane (row % 8) * 4 + (k % 8) / 2, register (row / 8) + 2 (k / 8); B (k, column): lane
      // column * 4 + (k % 8) / 2, register k / 8; the element is the pair's k % 2.
      const float x = fragment_element<T>(lanes(unsigned((row % 8) * 4 + (k % 8) / 2), row / 8 + 2 * (k / 8)), k % 2);
      const float y = fragment_element<T>(lanes(unsigned(column * 4 + (k % 8) / 2), 4 + k / 8), k % 2);
      sum = std::fma(x, y, sum);
    }
    out[e] = sum;
  }
  std::copy(out, out + 4, d);
}

inline void ldmatrix_x1(uint32_t& r, const void* row) { ::quietstar_emulation::ldmatrix<1, false>(&r, row); }
inline void ldmatrix_x2(uint32_t (&r)[2], const void* row) { ::quietstar_emulation::ldmatrix<2, false>(r, row); }
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ::quietstar_emulation::ldmatrix<4, false>(r, row); }
inline void ldmatrix_x1_trans(uint32_t& r, const void* row) { ::quietstar_emulation::ldmatrix<1, true>(&r, row); }
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
  ::quietstar_emulation::ldmatrix<2, true>(r, row);
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  ::quietstar_emulation::ldmatrix<4, true>(r, row);
}

inline void cp_async_16(void* dst, const void* src, int src_bytes) {
  using namespace ::quietstar_emulation;
  if (!in_shared_memory(dst, 16) || !aligned16(dst) || !aligned16(src) || src_bytes < 0 || src_bytes > 16) {
    report("cp.async needs a 16-byte aligned shared destination, a 16-byte aligned source and 0..16 bytes");
    return;
  }
  check_copy_issue(dst, int(threadIdx.x));
  this_fiber().open_copies.push_back(AsyncCopy{dst, src, src_bytes});
}

inline void cp_async_commit() {
  ::quietstar_emulation::Fiber& fiber = ::quietstar_emulation::this_fiber();
  fiber.copy_groups.push_back(std::move(fiber.open_copies));
  fiber.open_copies.clear();
}

template <int N>
void cp_async_wait() {
  ::quietstar_emulation::Fiber& fiber = ::quietstar_emulation::this_fiber();
  while (fiber.copy_groups.size() > size_t(N)) {
    for (const ::quietstar_emulation::AsyncCopy& copy : fiber.copy_groups.front()) {
      ::quietstar_emulation::land_copy(copy, int(fiber.thread_index.x));
    }
    fiber.copy_groups.erase(fiber.copy_groups.begin());
  }
}

inline uint32_t ld_shared_b32(const void* pointer) {
  using namespace ::quietstar_emulation;
  if (!in_shared_memory(pointer, 4) || reinterpret_cast<uintptr_t>(pointer) % 4 != 0) {
    report("ld_shared_b32 outside shared memory or not 4-byte aligned");
    return 0;
  }
  check_shared_read(pointer, int(threadIdx.x), false);
  uint32_t value;
  std::memcpy(&value, pointer, sizeof(value));
  return value;
}

inline float shfl_xor(float value, int lane_mask) { return __shfl_xor_sync(0xffffffffu, value, lane_mask); }

}  // namespace quietstar::ptx
