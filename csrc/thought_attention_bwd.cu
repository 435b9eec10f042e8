// Backward of thought-aware attention: the launcher and the kernels both paths share. Probabilities are recomputed
// from the LSE; no atomics, so the result is deterministic.
//
//   preprocess    delta = rowsum(dO * O) - dLSE (a gradient on the LSE adds P * dLSE to dS)
//   dq, prefix dk/dv  on tensor cores (thought_attention_bwd_mma.cu) for 16-bit inputs cp.async can copy, else
//                 on CUDA cores (thought_attention_bwd_fma.cu)
//   stream dk/dv  one warp per stream key (s, i): its only queries are position i's own at steps r >= s, so this is
//                 row-wise work with no GEMM
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

constexpr int kStreamRowsPerBlock = 16;

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) thought_attention_bwd_stream_dkdv_kernel(const ThoughtAttentionArgs args) {
  const int n = args.prefix_len;
  const int num_blocks = ceil_div(n, kStreamRowsPerBlock);
  const int batch_head = blockIdx.x / num_blocks;
  const int batch = batch_head / args.num_kv_heads;
  const int kv_head = batch_head % args.num_kv_heads;
  const int group_size = args.num_q_heads / args.num_kv_heads;
  const int stream_step = 1 + blockIdx.y;
  const int first_query_step = args.num_stream_steps + 1 - args.num_query_steps;
  const int lane = threadIdx.x % kWarpSize;
  const float scale_log2 = args.softmax_scale * kLog2e;
  const ThoughtMask mask = make_mask(args, batch);
  const int64_t key_row = int64_t(stream_step) * n;

  for (int r = threadIdx.x / kWarpSize; r < kStreamRowsPerBlock; r += kWarps) {
    const int i = int(blockIdx.x % num_blocks) * kStreamRowsPerBlock + r;
    if (i >= n) break;
    const T* k_row = head_base<const T>(args.k, batch, kv_head) + (key_row + i) * args.k.stride_token;
    const T* v_row = head_base<const T>(args.v, batch, kv_head) + (key_row + i) * args.v.stride_token;
    float k_reg[D / kWarpSize], v_reg[D / kWarpSize], dk[D / kWarpSize] = {}, dv[D / kWarpSize] = {};
#pragma unroll
    for (int t = 0; t < D / kWarpSize; ++t) {
      const int c = lane + t * kWarpSize;
      k_reg[t] = c < args.head_dim ? to_float(k_row[c]) : 0.f;
      v_reg[t] = c < args.head_dim ? to_float(v_row[c]) : 0.f;
    }
    // Key (s, i) is visible only to position i's own queries at steps r >= s, and only if i is a real token.
    const int first_step = mask.real(i) ? max(stream_step, first_query_step) : args.num_stream_steps + 1;
    for (int g = 0; g < group_size; ++g) {
      const int head = kv_head * group_size + g;
      for (int query_step = first_step; query_step <= args.num_stream_steps; ++query_step) {
        const int query = (query_step - first_query_step) * n + i;
        const T* q_row = head_base<const T>(args.q, batch, head) + int64_t(query) * args.q.stride_token;
        const T* grad_o_row = head_base<const T>(args.grad_o, batch, head) + int64_t(query) * args.grad_o.stride_token;
        float q_reg[D / kWarpSize], grad_o_reg[D / kWarpSize];
        float qk = 0.f;
        float dp = 0.f;
#pragma unroll
        for (int t = 0; t < D / kWarpSize; ++t) {
          const int c = lane + t * kWarpSize;
          q_reg[t] = c < args.head_dim ? to_float(q_row[c]) : 0.f;
          grad_o_reg[t] = c < args.head_dim ? to_float(grad_o_row[c]) : 0.f;
          qk = fmaf(q_reg[t], k_reg[t], qk);
          dp = fmaf(grad_o_reg[t], v_reg[t], dp);
        }
        const int64_t stat = stat_index(args, batch, head, query);
        const float p = exp2f(warp_sum(qk) * scale_log2 - lse_log2(args.lse[stat]));
        const float ds = p * (warp_sum(dp) - args.delta[stat]);
#pragma unroll
        for (int t = 0; t < D / kWarpSize; ++t) {
          dv[t] = fmaf(p, grad_o_reg[t], dv[t]);
          dk[t] = fmaf(ds, q_reg[t], dk[t]);
        }
      }
    }
    T* dk_row = head_base<T>(args.grad_k, batch, kv_head) + (key_row + i) * args.grad_k.stride_token;
    T* dv_row = head_base<T>(args.grad_v, batch, kv_head) + (key_row + i) * args.grad_v.stride_token;
#pragma unroll
    for (int t = 0; t < D / kWarpSize; ++t) {
      const int c = lane + t * kWarpSize;
      if (c < args.head_dim) {
        dk_row[c] = from_float<T>(dk[t] * args.softmax_scale);
        dv_row[c] = from_float<T>(dv[t]);
      }
    }
  }
}

template <typename T, int D>
void launch_stream_dkdv(const ThoughtAttentionArgs& args) {
  const int64_t blocks = int64_t(ceil_div(args.prefix_len, kStreamRowsPerBlock)) * args.batch * args.num_kv_heads;
  check_grid(blocks, args.num_stream_steps, "thought_attention_bwd_stream_dkdv");
  launch_kernel("thought_attention_bwd_stream_dkdv", thought_attention_bwd_stream_dkdv_kernel<T, D>,
                dim3(unsigned(blocks), unsigned(args.num_stream_steps)), kThreads, 0, args.stream, args);
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
      launch_thought_attention_backward_mma_gemms(args);
    } else {
      launch_thought_attention_backward_fma_gemms(args);
    }
    if (args.num_stream_steps > 0) {
      dispatch_head_dim(args.head_dim, [&](auto head_dim) { launch_stream_dkdv<T, decltype(head_dim)::value>(args); });
    }
  });
}

}  // namespace quietstar
