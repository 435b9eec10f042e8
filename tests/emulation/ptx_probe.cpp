// Probe kernels for the emulated PTX wrappers (csrc/ptx.cuh), built against the emulation by
// tests/test_ptx_emulation.py: each runs one wrapper and returns every lane's registers, so the tests can check the
// lane-to-element mapping against the PTX ISA independently of any attention or LM-head kernel; one two-warp
// pipeline exercises the race check.
#include <torch/extension.h>

#include "common.cuh"
#include "ptx.cuh"

namespace {

using quietstar_emulation::launch;

struct LdmatrixArgs {
  const int16_t* matrix;        // rows x columns, copied to shared memory first
  int elements;
  const int32_t* row_offsets;   // (32,) element offset of each lane's row address
  int32_t* registers;           // (32, 4)
  int count;
  bool transposed;
  bool from_global;             // give ldmatrix global addresses (must be refused)
};

void ldmatrix_kernel(const LdmatrixArgs args) {
  QUIETSTAR_DYNAMIC_SMEM(smem);
  int16_t* tile = reinterpret_cast<int16_t*>(smem);
  const int lane = threadIdx.x;
  for (int i = lane; i < args.elements; i += 32) tile[i] = args.matrix[i];
  __syncthreads();
  const int16_t* row = (args.from_global ? args.matrix : tile) + args.row_offsets[lane];
  uint32_t r[4] = {0u, 0u, 0u, 0u};
  uint32_t pair[2];
  switch (args.count * 2 + int(args.transposed)) {
    case 2: quietstar::ptx::ldmatrix_x1(r[0], row); break;
    case 3: quietstar::ptx::ldmatrix_x1_trans(r[0], row); break;
    case 4: quietstar::ptx::ldmatrix_x2(pair, row); r[0] = pair[0]; r[1] = pair[1]; break;
    case 5: quietstar::ptx::ldmatrix_x2_trans(pair, row); r[0] = pair[0]; r[1] = pair[1]; break;
    case 8: quietstar::ptx::ldmatrix_x4(r, row); break;
    default: quietstar::ptx::ldmatrix_x4_trans(r, row); break;
  }
  for (int i = 0; i < 4; ++i) args.registers[lane * 4 + i] = int32_t(r[i]);
}

torch::Tensor ldmatrix(torch::Tensor matrix, torch::Tensor row_offsets, int64_t count, bool transposed,
                       bool from_global) {
  TORCH_CHECK(matrix.scalar_type() == at::kShort && matrix.is_contiguous() && row_offsets.numel() == 32);
  auto registers = torch::zeros({32, 4}, torch::kInt32);
  auto offsets = row_offsets.to(torch::kInt32).contiguous();
  LdmatrixArgs args{matrix.data_ptr<int16_t>(), int(matrix.numel()), offsets.data_ptr<int32_t>(),
                    registers.data_ptr<int32_t>(), int(count), transposed, from_global};
  launch(ldmatrix_kernel, dim3(1), dim3(32), size_t(matrix.numel()) * 2, args);
  return registers;
}

struct MmaArgs {
  const int32_t* a;  // (32, 4) fragment registers
  const int32_t* b;  // (32, 2)
  float* d;          // (32, 4) accumulator in, result out
  bool bf16;
};

void mma_kernel(const MmaArgs args) {
  const int lane = threadIdx.x;
  uint32_t a[4], b[2];
  float d[4];
  for (int i = 0; i < 4; ++i) a[i] = uint32_t(args.a[lane * 4 + i]);
  for (int i = 0; i < 2; ++i) b[i] = uint32_t(args.b[lane * 2 + i]);
  for (int i = 0; i < 4; ++i) d[i] = args.d[lane * 4 + i];
  if (args.bf16) {
    quietstar::ptx::mma_m16n8k16<__nv_bfloat16>(d, a, b);
  } else {
    quietstar::ptx::mma_m16n8k16<__half>(d, a, b);
  }
  for (int i = 0; i < 4; ++i) args.d[lane * 4 + i] = d[i];
}

torch::Tensor mma(torch::Tensor a, torch::Tensor b, torch::Tensor c, bool bf16) {
  auto d = c.to(torch::kFloat32).contiguous().clone();
  auto a32 = a.to(torch::kInt32).contiguous();
  auto b32 = b.to(torch::kInt32).contiguous();
  MmaArgs args{a32.data_ptr<int32_t>(), b32.data_ptr<int32_t>(), d.data_ptr<float>(), bf16};
  launch(mma_kernel, dim3(1), dim3(32), 0, args);
  return d;
}

struct CopyArgs {
  const float* source;       // (2, 32, 4): group 0 then group 1, lane l's 16 bytes at [group][l]
  const int32_t* src_bytes;  // (32,) bytes each lane reads (the rest of its 16 are zero-filled)
  float* snapshots;          // (3, 2, 32, 4): shared memory after issue, after wait<1>, after wait<0>
  bool skip_wait;            // exit with copies in flight (must be refused)
};

void cp_async_kernel(const CopyArgs args) {
  QUIETSTAR_DYNAMIC_SMEM(smem);
  float* tile = reinterpret_cast<float*>(smem);
  const int lane = threadIdx.x;
  constexpr int kGroupFloats = 32 * 4;
  for (int group = 0; group < 2; ++group) {
    quietstar::ptx::cp_async_16(tile + group * kGroupFloats + lane * 4, args.source + group * kGroupFloats + lane * 4,
                                args.src_bytes[lane]);
    quietstar::ptx::cp_async_commit();
  }
  if (args.skip_wait) return;
  auto snapshot = [&](int index) {
    __syncthreads();
    for (int i = lane; i < 2 * kGroupFloats; i += 32) args.snapshots[index * 2 * kGroupFloats + i] = tile[i];
    __syncthreads();
  };
  snapshot(0);
  quietstar::ptx::cp_async_wait<1>();
  snapshot(1);
  quietstar::ptx::cp_async_wait<0>();
  snapshot(2);
}

torch::Tensor cp_async(torch::Tensor source, torch::Tensor src_bytes, bool skip_wait) {
  TORCH_CHECK(source.scalar_type() == at::kFloat && source.numel() == 2 * 32 * 4 && source.is_contiguous());
  auto bytes = src_bytes.to(torch::kInt32).contiguous();
  auto snapshots = torch::zeros({3, 2, 32, 4}, torch::kFloat32);
  CopyArgs args{source.data_ptr<float>(), bytes.data_ptr<int32_t>(), snapshots.data_ptr<float>(), skip_wait};
  launch(cp_async_kernel, dim3(1), dim3(32), 2 * 32 * 16, args);
  return snapshots;
}

struct PipelineArgs {
  const int16_t* source;  // (32, 8): warp 1's lane l copies row l
  int32_t* registers;     // (32, 4): warp 0's ldmatrix.x4 of the rows
  int mode;               // 0: barrier in place; 1: no barrier between the copies' wait and the read; 2: warp 1
                          // copies again into the rows warp 0 is reading, with no barrier in between
};

// Warp 1 copies a tile into shared memory with cp.async; warp 0 reads it with ldmatrix.
void pipeline_kernel(const PipelineArgs args) {
  QUIETSTAR_DYNAMIC_SMEM(smem);
  int16_t* tile = reinterpret_cast<int16_t*>(smem);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (warp == 1) {
    quietstar::ptx::cp_async_16(tile + lane * 8, args.source + lane * 8, 16);
    quietstar::ptx::cp_async_commit();
    quietstar::ptx::cp_async_wait<0>();
  }
  if (args.mode != 1) __syncthreads();
  if (warp == 0) {
    uint32_t r[4];
    quietstar::ptx::ldmatrix_x4(r, tile + lane * 8);
    for (int i = 0; i < 4; ++i) args.registers[lane * 4 + i] = int32_t(r[i]);
  } else if (args.mode == 2) {
    quietstar::ptx::cp_async_16(tile + lane * 8, args.source + lane * 8, 16);
    quietstar::ptx::cp_async_commit();
    quietstar::ptx::cp_async_wait<0>();
  }
}

torch::Tensor pipeline(torch::Tensor source, int64_t mode) {
  TORCH_CHECK(source.scalar_type() == at::kShort && source.numel() == 32 * 8 && source.is_contiguous());
  auto registers = torch::zeros({32, 4}, torch::kInt32);
  PipelineArgs args{source.data_ptr<int16_t>(), registers.data_ptr<int32_t>(), int(mode)};
  launch(pipeline_kernel, dim3(1), dim3(64), 32 * 16, args);
  return registers;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ldmatrix", &ldmatrix);
  m.def("mma", &mma);
  m.def("cp_async", &cp_async);
  m.def("pipeline", &pipeline);
}
