// Host helpers of the launchers: dtype dispatch, shared-memory opt-in, launch error checks.
#pragma once

#ifndef QUIETSTAR_EMULATION
#include <cuda_runtime.h>
#endif

#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

#include "common.cuh"
#include "launch.h"

namespace quietstar {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls body(TypeTag<T>{}) with T the element type of `kind`.
template <typename Body>
void dispatch_kind(ScalarKind kind, Body&& body) {
  switch (kind) {
    case ScalarKind::kFloat32:
      body(TypeTag<float>{});
      return;
    case ScalarKind::kFloat16:
      body(TypeTag<__half>{});
      return;
    case ScalarKind::kBFloat16:
      body(TypeTag<__nv_bfloat16>{});
      return;
  }
  throw std::invalid_argument("quietstar_fast._C: unknown dtype");
}

// Calls body with D = 64 or 128, the padded head dim the kernels are compiled for.
template <typename Body>
void dispatch_head_dim(int head_dim, Body&& body) {
  if (head_dim <= 64) {
    body(std::integral_constant<int, 64>{});
  } else if (head_dim <= 128) {
    body(std::integral_constant<int, 128>{});
  } else {
    throw std::invalid_argument("quietstar_fast._C: head_dim must be at most 128, got " + std::to_string(head_dim));
  }
}

// The tensor-core kernels' head dims: D = 64, 96 (80 and 96, as in Phi) or 128; D must be a multiple of 16.
template <typename Body>
void dispatch_mma_head_dim(int head_dim, Body&& body) {
  if (head_dim <= 64) {
    body(std::integral_constant<int, 64>{});
  } else if (head_dim <= 96) {
    body(std::integral_constant<int, 96>{});
  } else {
    dispatch_head_dim(head_dim, body);
  }
}

#ifndef QUIETSTAR_EMULATION
inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("quietstar_fast._C: ") + what + ": " + cudaGetErrorString(status));
  }
}

inline int current_device() {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

// Attributes of a device never change: each is read once per device, not at every launch.
inline int device_attribute(cudaDeviceAttr attribute, const char* what) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, int> cache;
  const std::pair<int, int> key{int(attribute), current_device()};
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(key);
  if (found == cache.end()) {
    int value = 0;
    check_cuda(cudaDeviceGetAttribute(&value, attribute, key.second), what);
    found = cache.emplace(key, value).first;
  }
  return found->second;
}
#endif

inline int max_shared_memory_per_block() {
#ifdef QUIETSTAR_EMULATION
  return 163 * 1024;  // sm_80's opt-in limit, the smallest of the targets
#else
  return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, "querying shared memory");
#endif
}

// Lets `kernel` use `bytes` of dynamic shared memory, with a clear error when the device has less.
template <typename Kernel>
void allow_shared_memory(Kernel kernel, int64_t bytes, const char* name) {
  const int available = max_shared_memory_per_block();
  if (bytes > available) {
    throw std::runtime_error(std::string("quietstar_fast._C: kernel ") + name + " needs " + std::to_string(bytes) +
                             " bytes of shared memory per block, the device allows " + std::to_string(available) +
                             "; use impl='triton' on this GPU");
  }
#ifndef QUIETSTAR_EMULATION
  // Once per kernel and device: each kernel always asks for the same size.
  static std::mutex mutex;
  static std::set<std::pair<const void*, int>> configured;
  const std::pair<const void*, int> key{reinterpret_cast<const void*>(kernel), current_device()};
  const std::lock_guard<std::mutex> lock(mutex);
  if (configured.count(key) == 0) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
               name);
    configured.insert(key);
  }
#endif
}

// kernel<<<grid, block, shared_bytes, stream>>>(args), then the launch error check.
template <typename Kernel, typename Args>
void launch_kernel(const char* name, Kernel kernel, dim3 grid, dim3 block, int64_t shared_bytes, cudaStream_t stream,
                   const Args& args) {
#ifdef QUIETSTAR_EMULATION
  (void)stream;
  ::quietstar_emulation::launch_log.emplace_back(name);
  ::quietstar_emulation::launch(kernel, grid, block, size_t(shared_bytes), args);
#else
  // The extension is built for sm_80 and newer (mma.sync on bf16, cp.async): say so instead of "no kernel image".
  if (device_attribute(cudaDevAttrComputeCapabilityMajor, "querying the compute capability") < 8) {
    throw std::runtime_error(std::string("quietstar_fast._C: ") + name +
                             " needs a GPU of compute capability 8.0 or newer; use impl='torch' on this GPU");
  }
  kernel<<<grid, block, size_t(shared_bytes), stream>>>(args);
  check_cuda(cudaGetLastError(), name);
#endif
}

inline void check_grid(int64_t x, int64_t y, const char* name) {
  if (x > 2147483647LL || y > 65535) {
    throw std::runtime_error(std::string("quietstar_fast._C: problem too large for one launch of ") + name);
  }
}

}  // namespace quietstar
