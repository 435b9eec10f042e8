// CPU emulation of the CUDA features the kernels in csrc/ use, so that the kernels' own code (indexing, masking,
// tiling, synchronisation, launch geometry) runs in the CPU test suite against the reference.
//
// Compiled by a host C++ compiler with -DQUIETSTAR_EMULATION (tests/emulation/). Each block runs as blockDim.x
// fibers (ucontext) on one OS thread, sharing a dynamic shared-memory buffer poisoned with NaN; a fiber runs until
// it reaches __syncthreads, __syncwarp or a shuffle, which are barriers. Blocks run one after another, so
// function-local `__shared__` arrays (static here) are per block. The tensor-core instructions (mma.sync, ldmatrix,
// cp.async) are emulated lane by lane in ptx_emulation.h.
// What it cannot show: data races outside the accesses ptx_emulation.h's race check tracks (the schedule is
// deterministic; compute-sanitizer racecheck on a GPU does that), performance, and compile errors of device-only
// code (the nvcc build in CI covers those).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __host__
#define __host__
#endif
#ifndef __forceinline__
#define __forceinline__ inline
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#undef __shared__
#define __shared__ static
#undef __align__
#define __align__(n) alignas(n)

namespace quietstar_emulation {

constexpr int kWarpSize = 32;
constexpr size_t kFiberStackBytes = 256 * 1024;

// A barrier among fibers: the last to arrive opens the next generation, the others yield until it opens.
struct Barrier {
  int expected = 0;
  int arrived = 0;
  uint64_t generation = 0;
};

// A cp.async copy in flight: it lands in shared memory only when a wait retires its group.
struct AsyncCopy {
  void* dst;
  const void* src;
  int src_bytes;
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  uint3 thread_index{0, 0, 0};
  bool done = false;
  std::vector<AsyncCopy> open_copies;                   // issued, not yet committed
  std::vector<std::vector<AsyncCopy>> copy_groups;      // committed, oldest first
  unsigned exchange_parity = 0;                         // which half of the warp exchange the next collective uses
};

// Words a lane publishes to its warp in one collective (ldmatrix addresses, mma fragments).
constexpr int kExchangeWords = 16;

// What the race check (ptx_emulation.h) knows of one 16-byte chunk of shared memory. Epochs count the block's
// __syncthreads: accesses by different threads in the same epoch are unordered.
struct ChunkAccess {
  static constexpr int kNobody = -1;
  static constexpr int kSeveral = -2;
  int copy_in_flight_by = kNobody;  // a cp.async issued into it and not yet retired by its thread's wait
  int landed_by = kNobody;          // the thread whose retired cp.async last wrote it
  uint64_t landed_epoch = ~0ull;
  int read_by = kNobody;            // the warp that read it with ldmatrix in read_epoch (kSeveral: more than one)
  uint64_t read_epoch = ~0ull;
};

struct Block {
  dim3 grid_dim, block_dim;
  uint3 block_index{0, 0, 0};
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<uint64_t> shuffle_slots;  // one per thread
  std::vector<uint64_t> exchange;       // two halves of kExchangeWords per thread (see ptx_emulation.h)
  char* shared_memory = nullptr;
  size_t shared_bytes = 0;
  std::string error;                    // the first misuse a wrapper detected; launch() throws it
  std::vector<ChunkAccess> chunk_access;  // per 16 bytes of shared memory
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  int running = -1;  // index of the fiber now running
};

// The block being run; everything runs on the calling OS thread.
inline Block* current = nullptr;

// Names of the kernels launched since the tests last read them (which path a call took).
inline std::vector<std::string> launch_log;

inline Fiber& this_fiber() { return current->fibers[current->running]; }

inline void yield_to_scheduler() { swapcontext(&this_fiber().context, &current->scheduler); }

inline void wait(Barrier& barrier) {
  if (++barrier.arrived == barrier.expected) {
    barrier.arrived = 0;
    ++barrier.generation;
    return;
  }
  const uint64_t generation = barrier.generation;
  while (barrier.generation == generation) yield_to_scheduler();
}

inline Barrier& this_warp_barrier() { return current->warp_barriers[this_fiber().thread_index.x / kWarpSize]; }

inline char* dynamic_shared_memory() { return current->shared_memory; }

template <typename Kernel, typename Args>
struct Entry {
  static inline Kernel kernel;
  static inline const Args* args;
  static void run() {
    kernel(*args);
    Fiber& fiber = this_fiber();
    if ((!fiber.open_copies.empty() || !fiber.copy_groups.empty()) && current->error.empty()) {
      current->error = "a thread exited with cp.async copies it never waited for";
    }
    fiber.done = true;
  }
};

// Runs kernel(args) over the grid, block after block. A block's threads are fibers on this OS thread, switched at
// barriers and shuffles: deterministic, and cheap enough for the test shapes.
template <typename Kernel, typename Args>
void launch(Kernel kernel, dim3 grid, dim3 block_dim, size_t shared_bytes, const Args& args) {
  if (block_dim.y != 1 || block_dim.z != 1 || block_dim.x % kWarpSize != 0) {
    throw std::invalid_argument("emulation: blocks must be one-dimensional whole warps");
  }
  using KernelEntry = Entry<Kernel, Args>;
  KernelEntry::kernel = kernel;
  KernelEntry::args = &args;
  const int threads = int(block_dim.x);
  std::unique_ptr<char[]> shared(new (std::align_val_t(128)) char[std::max<size_t>(shared_bytes, 4)]);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        Block block;
        block.grid_dim = grid;
        block.block_dim = block_dim;
        block.block_index = uint3{x, y, z};
        block.block_barrier.expected = threads;
        block.warp_barriers.assign(threads / kWarpSize, Barrier{kWarpSize, 0, 0});
        block.shuffle_slots.assign(threads, 0);
        block.exchange.assign(size_t(threads) * 2 * kExchangeWords, 0);
        // Stale shared memory is NaN, so reading it before writing it shows up in the results.
        std::fill_n(reinterpret_cast<float*>(shared.get()), shared_bytes / sizeof(float), NAN);
        block.shared_memory = shared.get();
        block.shared_bytes = shared_bytes;
        block.chunk_access.assign((shared_bytes + 15) / 16, ChunkAccess{});
        block.fibers.resize(threads);
        for (int t = 0; t < threads; ++t) {
          Fiber& fiber = block.fibers[t];
          fiber.thread_index = uint3{unsigned(t), 0, 0};
          fiber.stack.reset(new char[kFiberStackBytes]);
          getcontext(&fiber.context);
          fiber.context.uc_stack.ss_sp = fiber.stack.get();
          fiber.context.uc_stack.ss_size = kFiberStackBytes;
          fiber.context.uc_link = &block.scheduler;
          makecontext(&fiber.context, &KernelEntry::run, 0);
        }
        current = &block;
        for (int finished = 0; finished < threads;) {
          finished = 0;
          for (int t = 0; t < threads; ++t) {
            if (block.fibers[t].done) {
              ++finished;
              continue;
            }
            block.running = t;
            swapcontext(&block.scheduler, &block.fibers[t].context);
          }
        }
        current = nullptr;
        if (!block.error.empty()) throw std::runtime_error("CUDA emulation: " + block.error);
      }
    }
  }
}

}  // namespace quietstar_emulation

#define threadIdx (::quietstar_emulation::this_fiber().thread_index)
#define blockIdx (::quietstar_emulation::current->block_index)
#define blockDim (::quietstar_emulation::current->block_dim)
#define gridDim (::quietstar_emulation::current->grid_dim)

inline void __syncthreads() { quietstar_emulation::wait(quietstar_emulation::current->block_barrier); }
inline void __syncwarp(unsigned = 0xffffffffu) { quietstar_emulation::wait(quietstar_emulation::this_warp_barrier()); }

template <typename T>
T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a wide type");
  using namespace ::quietstar_emulation;
  const unsigned thread = threadIdx.x;
  const unsigned warp_base = thread / kWarpSize * kWarpSize;
  std::memcpy(&current->shuffle_slots[thread], &value, sizeof(T));
  wait(this_warp_barrier());
  T other;
  std::memcpy(&other, &current->shuffle_slots[warp_base + ((thread % kWarpSize) ^ unsigned(lane_mask))], sizeof(T));
  wait(this_warp_barrier());
  return other;
}

inline uint32_t __umulhi(uint32_t a, uint32_t b) { return uint32_t((uint64_t(a) * uint64_t(b)) >> 32); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
