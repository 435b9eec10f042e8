// Host interface between the op layer (ops.cpp: validation, allocation, dispatch) and the kernel launchers (.cu).
// Plain structs only, so the .cu files compile without torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace quietstar {

enum class ScalarKind { kFloat32, kFloat16, kBFloat16 };

// A (batch, heads, tokens, head_dim) tensor: element strides of the first three dims; the head dim is contiguous.
struct Operand {
  void* data = nullptr;
  int64_t stride_batch = 0;
  int64_t stride_head = 0;
  int64_t stride_token = 0;
};

struct ThoughtAttentionArgs {
  ScalarKind kind = ScalarKind::kFloat32;
  cudaStream_t stream = nullptr;
  int batch = 0, num_q_heads = 0, num_kv_heads = 0, head_dim = 0;
  int prefix_len = 0;        // n
  int num_stream_steps = 0;  // a: k/v hold (a + 1) * n tokens
  int num_query_steps = 0;   // m: q holds the last m steps, a + 1 - m .. a
  int window = 0;            // sliding window W, 0 = none
  float softmax_scale = 1.f;
  const int8_t* key_valid = nullptr;  // (B, n), 1 = real token; null = no padding
  int64_t key_valid_stride = 0;
  Operand q, k, v, o;
  float* lse = nullptr;  // (B, Hq, m * n) contiguous
  // Backward only.
  Operand grad_o, grad_q, grad_k, grad_v;  // grad_k and grad_v share one layout
  const float* grad_lse = nullptr;          // like lse, or null
  float* delta = nullptr;                   // scratch like lse
};

void launch_thought_attention_forward(const ThoughtAttentionArgs& args);
// The exact CUDA-core path the launcher above takes for fp32 and for layouts cp.async cannot copy.
void launch_thought_attention_forward_fma(const ThoughtAttentionArgs& args);
void launch_thought_attention_backward(const ThoughtAttentionArgs& args);
// The dQ, prefix dK/dV and stream dK/dV kernels after the preprocess, on tensor cores or on CUDA cores (the
// exact path).
void launch_thought_attention_backward_mma(const ThoughtAttentionArgs& args);
void launch_thought_attention_backward_fma(const ThoughtAttentionArgs& args);

struct LinearSoftmaxArgs {
  ScalarKind kind = ScalarKind::kFloat32;
  cudaStream_t stream = nullptr;
  int num_rows = 0, vocab = 0, hidden = 0;
  const void* hidden_states = nullptr;  // (N, D), row stride stride_hidden, unit column stride
  int64_t stride_hidden = 0;
  const void* weight = nullptr;  // (V, D), row stride stride_weight
  int64_t stride_weight = 0;
  const int8_t* banned = nullptr;  // (V,) 1 = banned, or null
  float inv_t = 1.f;
  // Forward.
  const int64_t* targets = nullptr;  // (N,) cross-entropy mode; null = sampling mode
  const float* noise = nullptr;      // (N, V) Gumbel noise, row stride stride_noise; null = Philox from seed
  int64_t stride_noise = 0;
  const int64_t* seed = nullptr;  // one element, on the device
  float sample_scale = 1.f;
  int num_splits = 1, vocab_per_split = 0;
  float *part_max = nullptr, *part_sum = nullptr, *part_pick = nullptr, *part_best = nullptr;  // (N, splits)
  int32_t* part_index = nullptr;
  // Gradient.
  const float* lse = nullptr;   // (C,)
  const float* coef = nullptr;  // (C,)
  void* grad_logits = nullptr;  // (C, V) contiguous, the inputs' dtype
};

// Vocabulary columns per program of the forward kernel, for the op layer's split arithmetic.
int linear_softmax_block_vocab(ScalarKind kind);
int linear_softmax_block_rows(ScalarKind kind);
int multiprocessor_count();
void launch_linear_softmax_forward(const LinearSoftmaxArgs& args);
void launch_linear_softmax_grad(const LinearSoftmaxArgs& args);

}  // namespace quietstar
