// Backward of thought-aware attention: the launcher and the preprocess kernel both paths share. Probabilities are recomputed
// from the LSE; no atomics, so the result is deterministic.
//
//   preprocess    delta = rowsum(dO * O) - dLSE (a gradient on the LSE adds P * dLSE to dS)
//   then dq, prefix dk/dv and stream dk/dv on tensor cores (thought_attention_bwd_mma.cu) for 16-bit inputs that
//   cp.async can copy, else on CUDA cores (thought_attention_bwd_fma.cu)
#include "common.cuh"
#include "launch_utils.cuh"
#include "thought_attention_mask.cuh"

namespace quietstar {
namespace {

template <typename T>
__global__ void __launch_bounds__(256) thought_attention_bwd_preprocess_kernel(const ThoughtAttentionArgs args) {
  const int rows_per_head = args.num_query_steps * args.prefix_len;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (row >= int64_t(args.batch) * args.num_q_heads * rows_per_head) return;
  const int lane = threadIdx.x % kWarpSize;
  const int batch_head = int(row / rows_per_head);
  const int token = int(row % rows_per_head);
  const int batch = batch_head / args.num_q_heads;
  const int head = batch_head % args.num_q_heads;
  const T* o = head_base<const T>(args.o, batch, head) + int64_t(token) * args.o.stride_token;
  const T* grad_o = head_base<const T>(args.grad_o, batch, head) + int64_t(token) * args.grad_o.stride_token;
  float dot = 0.f;
  for (int c = lane; c < args.head_dim; c += kWarpSize) dot = fmaf(to_float(o[c]), to_float(grad_o[c]), dot);
  dot = warp_sum(dot);
  if (lane == 0) args.delta[row] = dot - (args.grad_lse != nullptr ? args.grad_lse[row] : 0.f);
}

}  // namespace

void launch_thought_attention_backward(const ThoughtAttentionArgs& args) {
  dispatch_kind(args.kind, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = int64_t(args.batch) * args.num_q_heads * args.num_query_steps * args.prefix_len;
    constexpr int kPreprocessRows = 8;
    const int64_t preprocess_blocks = (rows + kPreprocessRows - 1) / kPreprocessRows;
    check_grid(preprocess_blocks, 1, "thought_attention_bwd_preprocess");
    launch_kernel("thought_attention_bwd_preprocess", thought_attention_bwd_preprocess_kernel<T>,
                  unsigned(preprocess_blocks), kPreprocessRows * kWarpSize, 0, args.stream, args);
    if (tensor_core_layout(args, true)) {
      launch_thought_attention_backward_mma(args);
    } else {
      launch_thought_attention_backward_fma(args);
    }
  });
}

}  // namespace quietstar
