// The op layer of quietstar_fast._C: argument validation, allocation, dispatch to the kernel launchers, and the
// registration of the ops with torch.library (namespace quietstar_fast) so torch.compile can see them.
//
// Every op is registered for CPU and CUDA with the same function. Arguments are validated first (shapes, dtypes,
// devices), so the errors read the same everywhere; CPU tensors then get an error that points to impl="torch".
#ifndef QUIETSTAR_EMULATION
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "launch.h"

namespace quietstar {
namespace {

using at::Tensor;

std::string shape_of(const Tensor& x) {
  std::string text = "(";
  for (int64_t d = 0; d < x.dim(); ++d) text += (d ? ", " : "") + std::to_string(x.size(d));
  return text + (x.dim() == 1 ? ",)" : ")");
}

ScalarKind scalar_kind(const Tensor& x, const char* name) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return ScalarKind::kFloat32;
    case at::kHalf:
      return ScalarKind::kFloat16;
    case at::kBFloat16:
      return ScalarKind::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, name, " has dtype ", x.scalar_type(),
                       "; the CUDA kernels support float16, bfloat16 and float32 (use impl=\"torch\" for float64)");
  }
}

void check_same_device(const Tensor& x, const char* name, const Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(x.device() == like.device(), name, " is on ", x.device(), " but ", like_name, " is on ",
                    like.device());
}

void check_dtype(const Tensor& x, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(x.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", x.scalar_type());
}

#ifndef QUIETSTAR_EMULATION
// The last step of validation: these kernels run on CUDA tensors only.
void require_cuda(const Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), "quietstar_fast::", op, " runs on CUDA tensors; the inputs are on ", x.device(),
              ". Use impl=\"torch\" for CPU tensors.");
}

// Makes x's device current for the launches and gives the stream to launch on.
struct DeviceScope {
  explicit DeviceScope(const Tensor& x) : guard(x.device()) {}
  cudaStream_t stream() const { return at::cuda::getCurrentCUDAStream(); }
  c10::cuda::CUDAGuard guard;
};
#else
// The CPU emulation of the kernels (tests/emulation/) takes CPU tensors.
void require_cuda(const Tensor&, const char*) {}

struct DeviceScope {
  explicit DeviceScope(const Tensor&) {}
  cudaStream_t stream() const { return nullptr; }
};
#endif

// A kernel output. The CPU emulation (tests only) fills it with NaN, or -1 for integers, so an element that a kernel
// never writes fails the tests instead of reading as a plausible zero.
Tensor output_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
#ifdef QUIETSTAR_EMULATION
  if (at::isIntegralType(options.dtype().toScalarType(), /*includeBool=*/false)) return at::full(sizes, -1, options);
  return at::full(sizes, std::numeric_limits<float>::quiet_NaN(), options);
#else
  return at::empty(sizes, options);
#endif
}

Operand operand(const Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.stride(3) == 1, name, " must be contiguous in the head dimension (stride 1), got stride ",
                    x.stride(3));
  return Operand{const_cast<void*>(x.data_ptr()), x.stride(0), x.stride(1), x.stride(2)};
}

struct AttentionProblem {
  ThoughtAttentionArgs args;
  std::optional<Tensor> key_valid;
};

AttentionProblem check_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const std::optional<Tensor>& key_valid, int64_t prefix_len, int64_t sliding_window,
                                 double softmax_scale) {
  for (auto [x, name] : {std::pair<const Tensor&, const char*>{q, "q"}, {k, "k"}, {v, "v"}}) {
    TORCH_CHECK_VALUE(x.dim() == 4, name, " must be 4-D (batch, heads, tokens, head_dim), got shape ", shape_of(x));
  }
  ThoughtAttentionArgs args;
  args.kind = scalar_kind(q, "q");
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                   "q, k and v must share one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
                   v.scalar_type());
  check_same_device(k, "k", q, "q");
  check_same_device(v, "v", q, "q");
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), "k and v must have the same shape, got ", shape_of(k), " and ",
                    shape_of(v));
  TORCH_CHECK_VALUE(q.size(0) >= 1 && q.size(1) >= 1, "q must have at least one batch row and head, got shape ",
                    shape_of(q));
  TORCH_CHECK_VALUE(k.size(0) == q.size(0), "k has batch size ", k.size(0), " but q has ", q.size(0));
  TORCH_CHECK_VALUE(k.size(3) == q.size(3), "k has head_dim ", k.size(3), " but q has ", q.size(3));
  TORCH_CHECK_VALUE(q.size(3) >= 1 && q.size(3) <= 128, "head_dim must be in [1, 128] for the CUDA kernels, got ",
                    q.size(3));
  TORCH_CHECK_VALUE(k.size(1) >= 1 && q.size(1) % k.size(1) == 0, "q heads (", q.size(1),
                    ") must be a multiple of k/v heads (", k.size(1), ")");
  TORCH_CHECK_VALUE(prefix_len >= 1, "prefix_len must be positive, got ", prefix_len);
  TORCH_CHECK_VALUE(k.size(2) % prefix_len == 0, "k has ", k.size(2), " keys, not a multiple of prefix_len=",
                    prefix_len);
  TORCH_CHECK_VALUE(q.size(2) > 0 && q.size(2) % prefix_len == 0, "q has ", q.size(2),
                    " queries, not a positive multiple of prefix_len=", prefix_len);
  TORCH_CHECK_VALUE(q.size(2) <= k.size(2), "q has ", q.size(2), " queries but k only ", k.size(2), " keys");
  TORCH_CHECK_VALUE(sliding_window >= 0, "sliding_window must be >= 0 (0 = none), got ", sliding_window);
  TORCH_CHECK_VALUE(std::isfinite(softmax_scale) && softmax_scale > 0, "softmax_scale must be positive, got ",
                    softmax_scale);
  TORCH_CHECK_VALUE(k.size(2) <= INT32_MAX && q.size(0) * q.size(1) <= INT32_MAX, "problem too large");
  if (key_valid.has_value()) {
    const Tensor& valid = *key_valid;
    check_dtype(valid, "key_valid", at::kChar);
    check_same_device(valid, "key_valid", q, "q");
    TORCH_CHECK_VALUE(valid.dim() == 2 && valid.size(0) == q.size(0) && valid.size(1) == prefix_len,
                      "key_valid must have shape (batch, prefix_len) = (", q.size(0), ", ", prefix_len, "), got ",
                      shape_of(valid));
    TORCH_CHECK_VALUE(valid.stride(1) == 1, "key_valid must be contiguous in its last dimension");
    args.key_valid = valid.data_ptr<int8_t>();
    args.key_valid_stride = valid.stride(0);
  }
  args.batch = int(q.size(0));
  args.num_q_heads = int(q.size(1));
  args.num_kv_heads = int(k.size(1));
  args.head_dim = int(q.size(3));
  args.prefix_len = int(prefix_len);
  args.num_stream_steps = int(k.size(2) / prefix_len) - 1;
  args.num_query_steps = int(q.size(2) / prefix_len);
  args.window = sliding_window >= prefix_len ? 0 : int(sliding_window);  // a window as long as the prefix masks nothing
  args.softmax_scale = float(softmax_scale);
  args.q = operand(q, "q");
  args.k = operand(k, "k");
  args.v = operand(v, "v");
  return {args, key_valid};
}

std::tuple<Tensor, Tensor> thought_attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 const std::optional<Tensor>& key_valid, int64_t prefix_len,
                                                 int64_t sliding_window, double softmax_scale) {
  AttentionProblem problem = check_attention(q, k, v, key_valid, prefix_len, sliding_window, softmax_scale);
  require_cuda(q, "thought_attention_fwd");
  const DeviceScope scope(q);
  Tensor out = output_buffer(q.sizes(), q.options());
  Tensor lse = output_buffer({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  ThoughtAttentionArgs& args = problem.args;
  args.o = operand(out, "out");
  args.lse = lse.data_ptr<float>();
  args.stream = scope.stream();
  launch_thought_attention_forward(args);
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor> thought_attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v,
                                                         const Tensor& out, const Tensor& lse, const Tensor& grad_out,
                                                         const std::optional<Tensor>& grad_lse,
                                                         const std::optional<Tensor>& key_valid, int64_t prefix_len,
                                                         int64_t sliding_window, double softmax_scale) {
  AttentionProblem problem = check_attention(q, k, v, key_valid, prefix_len, sliding_window, softmax_scale);
  for (auto [x, name] : {std::pair<const Tensor&, const char*>{out, "out"}, {grad_out, "grad_out"}}) {
    TORCH_CHECK_VALUE(x.sizes() == q.sizes(), name, " must have q's shape ", shape_of(q), ", got ", shape_of(x));
    check_dtype(x, name, q.scalar_type());
    check_same_device(x, name, q, "q");
  }
  const std::vector<int64_t> stat_shape{q.size(0), q.size(1), q.size(2)};
  for (const Tensor* stat : {&lse, grad_lse.has_value() ? &*grad_lse : nullptr}) {
    if (stat == nullptr) continue;
    const char* name = stat == &lse ? "lse" : "grad_lse";
    TORCH_CHECK_VALUE(stat->sizes() == stat_shape, name, " must have shape (batch, q heads, q tokens), got ",
                      shape_of(*stat));
    check_dtype(*stat, name, at::kFloat);
    check_same_device(*stat, name, q, "q");
    TORCH_CHECK_VALUE(stat->is_contiguous(), name, " must be contiguous");
  }
  require_cuda(q, "thought_attention_bwd");
  const DeviceScope scope(q);
  Tensor grad_q = output_buffer(q.sizes(), q.options());
  Tensor grad_k = output_buffer(k.sizes(), k.options());
  Tensor grad_v = output_buffer(v.sizes(), v.options());
  Tensor delta = output_buffer(stat_shape, lse.options());
  ThoughtAttentionArgs& args = problem.args;
  args.o = operand(out, "out");
  args.lse = const_cast<float*>(lse.data_ptr<float>());
  args.grad_o = operand(grad_out, "grad_out");
  args.grad_q = operand(grad_q, "grad_q");
  args.grad_k = operand(grad_k, "grad_k");
  args.grad_v = operand(grad_v, "grad_v");
  args.grad_lse = grad_lse.has_value() ? grad_lse->data_ptr<float>() : nullptr;
  args.delta = delta.data_ptr<float>();
  args.stream = scope.stream();
  launch_thought_attention_backward(args);
  return {grad_q, grad_k, grad_v};
}

// Shared checks of the LM-head ops: hidden (N, D) and weight (V, D) with unit column stride, optional banned (V,).
LinearSoftmaxArgs check_linear(const Tensor& hidden, const Tensor& weight, const std::optional<Tensor>& banned,
                               double inv_t) {
  TORCH_CHECK_VALUE(hidden.dim() == 2, "hidden must be 2-D (rows, hidden_dim), got shape ", shape_of(hidden));
  TORCH_CHECK_VALUE(weight.dim() == 2, "weight must be 2-D (vocab, hidden_dim), got shape ", shape_of(weight));
  LinearSoftmaxArgs args;
  args.kind = scalar_kind(hidden, "hidden");
  check_dtype(weight, "weight", hidden.scalar_type());
  check_same_device(weight, "weight", hidden, "hidden");
  TORCH_CHECK_VALUE(weight.size(1) == hidden.size(1), "weight has hidden size ", weight.size(1), " but hidden has ",
                    hidden.size(1));
  TORCH_CHECK_VALUE(hidden.size(0) >= 1 && weight.size(0) >= 1 && hidden.size(1) >= 1,
                    "hidden and weight must be non-empty, got ", shape_of(hidden), " and ", shape_of(weight));
  TORCH_CHECK_VALUE(hidden.size(0) <= INT32_MAX && weight.size(0) <= INT32_MAX && hidden.size(1) <= INT32_MAX,
                    "problem too large");
  TORCH_CHECK_VALUE(hidden.stride(1) == 1 && weight.stride(1) == 1,
                    "hidden and weight must be contiguous in their last dimension");
  TORCH_CHECK_VALUE(std::isfinite(inv_t) && inv_t > 0, "inv_t must be positive, got ", inv_t);
  if (banned.has_value()) {
    check_dtype(*banned, "banned", at::kChar);
    check_same_device(*banned, "banned", hidden, "hidden");
    TORCH_CHECK_VALUE(banned->dim() == 1 && banned->size(0) == weight.size(0) && banned->is_contiguous(),
                      "banned must be a contiguous (vocab,) = (", weight.size(0), ",) int8 mask, got ",
                      shape_of(*banned));
    args.banned = banned->data_ptr<int8_t>();
  }
  args.num_rows = int(hidden.size(0));
  args.vocab = int(weight.size(0));
  args.hidden = int(hidden.size(1));
  args.hidden_states = hidden.data_ptr();
  args.stride_hidden = hidden.stride(0);
  args.weight = weight.data_ptr();
  args.stride_weight = weight.stride(0);
  args.inv_t = float(inv_t);
  return args;
}

void check_rows(const Tensor& x, const char* name, const Tensor& hidden, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(x.dim() == 1 && x.size(0) == hidden.size(0) && x.is_contiguous(), name,
                    " must be a contiguous (rows,) = (", hidden.size(0), ",) tensor, got ", shape_of(x));
  check_dtype(x, name, dtype);
  check_same_device(x, name, hidden, "hidden");
}

// Returns (lse (N,), picked logit (N,), sampled tokens (N,) int64 or an empty tensor in cross-entropy mode).
std::tuple<Tensor, Tensor, Tensor> linear_softmax_fwd(const Tensor& hidden, const Tensor& weight,
                                                      const std::optional<Tensor>& targets,
                                                      const std::optional<Tensor>& noise,
                                                      const std::optional<Tensor>& seed,
                                                      const std::optional<Tensor>& banned, double inv_t,
                                                      double sample_scale) {
  LinearSoftmaxArgs args = check_linear(hidden, weight, banned, inv_t);
  const bool sample = !targets.has_value();
  if (!sample) check_rows(*targets, "targets", hidden, at::kLong);
  if (noise.has_value()) {
    TORCH_CHECK_VALUE(sample, "noise is only used for sampling (without targets)");
    check_dtype(*noise, "noise", at::kFloat);
    check_same_device(*noise, "noise", hidden, "hidden");
    TORCH_CHECK_VALUE(noise->dim() == 2 && noise->size(0) == hidden.size(0) && noise->size(1) == weight.size(0) &&
                          noise->stride(1) == 1,
                      "noise must be (rows, vocab) = (", hidden.size(0), ", ", weight.size(0),
                      ") with unit column stride, got ", shape_of(*noise));
  } else if (sample) {
    TORCH_CHECK_VALUE(seed.has_value(), "sampling without noise needs a seed");
    TORCH_CHECK_VALUE(seed->numel() == 1, "seed must hold one element, got shape ", shape_of(*seed));
    check_dtype(*seed, "seed", at::kLong);
    check_same_device(*seed, "seed", hidden, "hidden");
  }
  TORCH_CHECK_VALUE(std::isfinite(sample_scale), "sample_scale must be finite, got ", sample_scale);
  require_cuda(hidden, "linear_softmax_fwd");
  const DeviceScope scope(hidden);
  // Enough vocabulary slices to fill the GPU when the rows alone are too few.
  const int block_m = linear_softmax_block_rows(args.kind);
  const int block_v = linear_softmax_block_vocab(args.kind);
  const int64_t tiles = (args.vocab + block_v - 1) / block_v;
  const int64_t row_blocks = (args.num_rows + block_m - 1) / block_m;
  const int64_t programs = 2 * int64_t(multiprocessor_count());
  const int64_t splits = std::clamp<int64_t>((programs + row_blocks - 1) / row_blocks, 1, tiles);
  const int64_t tiles_per_split = (tiles + splits - 1) / splits;
  args.vocab_per_split = int(tiles_per_split * block_v);
  args.num_splits = int((args.vocab + args.vocab_per_split - 1) / args.vocab_per_split);

  const auto f32 = hidden.options().dtype(at::kFloat);
  Tensor part_max = output_buffer({args.num_rows, args.num_splits}, f32);
  Tensor part_sum = output_buffer({args.num_rows, args.num_splits}, f32);
  Tensor part_pick = output_buffer({args.num_rows, args.num_splits}, f32);
  Tensor part_best = sample ? output_buffer({args.num_rows, args.num_splits}, f32) : Tensor();
  Tensor part_index = sample ? output_buffer({args.num_rows, args.num_splits}, f32.dtype(at::kInt)) : Tensor();
  args.targets = sample ? nullptr : targets->data_ptr<int64_t>();
  args.noise = noise.has_value() ? noise->data_ptr<float>() : nullptr;
  args.stride_noise = noise.has_value() ? noise->stride(0) : 0;
  args.seed = sample && !noise.has_value() ? seed->data_ptr<int64_t>() : nullptr;
  args.sample_scale = float(sample_scale);
  args.part_max = part_max.data_ptr<float>();
  args.part_sum = part_sum.data_ptr<float>();
  args.part_pick = part_pick.data_ptr<float>();
  args.part_best = sample ? part_best.data_ptr<float>() : nullptr;
  args.part_index = sample ? part_index.data_ptr<int32_t>() : nullptr;
  args.stream = scope.stream();
  launch_linear_softmax_forward(args);

  // Merge the slices: a few floats per row.
  const Tensor row_max = part_max.amax(1);
  const Tensor lse = row_max + at::log((part_sum * at::exp(part_max - row_max.unsqueeze(1))).sum(1));
  if (!sample) return {lse, part_pick.sum(1), at::empty({0}, targets->options())};
  const Tensor winner = part_best.argmax(1, /*keepdim=*/true);  // first slice on ties: the lowest id wins
  return {lse, part_pick.gather(1, winner).squeeze(1), part_index.gather(1, winner).squeeze(1).to(at::kLong)};
}

// d loss / d logits (rows, V) in hidden's dtype for loss = sum_i coef_i * (lse_i - inv_t * z_i[target_i]).
Tensor linear_softmax_grad(const Tensor& hidden, const Tensor& weight, const Tensor& lse, const Tensor& targets,
                           const Tensor& coef, const std::optional<Tensor>& banned, double inv_t) {
  LinearSoftmaxArgs args = check_linear(hidden, weight, banned, inv_t);
  check_rows(lse, "lse", hidden, at::kFloat);
  check_rows(targets, "targets", hidden, at::kLong);
  check_rows(coef, "coef", hidden, at::kFloat);
  require_cuda(hidden, "linear_softmax_grad");
  const DeviceScope scope(hidden);
  Tensor grad = output_buffer({hidden.size(0), weight.size(0)}, hidden.options());
  args.lse = lse.data_ptr<float>();
  args.targets = targets.data_ptr<int64_t>();
  args.coef = coef.data_ptr<float>();
  args.grad_logits = grad.data_ptr();
  args.stream = scope.stream();
  launch_linear_softmax_grad(args);
  return grad;
}

}  // namespace
}  // namespace quietstar

// The emulation registers the same ops under another namespace, for CPU tensors only.
#ifdef QUIETSTAR_EMULATION
#define QUIETSTAR_OPS quietstar_fast_emulated
#else
#define QUIETSTAR_OPS quietstar_fast
#endif
// One level of indirection so that QUIETSTAR_OPS expands before TORCH_LIBRARY pastes it into names.
#define QUIETSTAR_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define QUIETSTAR_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

QUIETSTAR_LIBRARY(QUIETSTAR_OPS, m) {
  m.def(
      "thought_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_valid, int prefix_len, int sliding_window, "
      "float softmax_scale) -> (Tensor, Tensor)");
  m.def(
      "thought_attention_bwd(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor grad_out, "
      "Tensor? grad_lse, Tensor? key_valid, int prefix_len, int sliding_window, float softmax_scale) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "linear_softmax_fwd(Tensor hidden, Tensor weight, Tensor? targets, Tensor? noise, Tensor? seed, "
      "Tensor? banned, float inv_t, float sample_scale) -> (Tensor, Tensor, Tensor)");
  m.def(
      "linear_softmax_grad(Tensor hidden, Tensor weight, Tensor lse, Tensor targets, Tensor coef, Tensor? banned, "
      "float inv_t) -> Tensor");
}

#define QUIETSTAR_IMPLS(m)                                               \
  m.impl("thought_attention_fwd", &quietstar::thought_attention_fwd); \
  m.impl("thought_attention_bwd", &quietstar::thought_attention_bwd); \
  m.impl("linear_softmax_fwd", &quietstar::linear_softmax_fwd);       \
  m.impl("linear_softmax_grad", &quietstar::linear_softmax_grad)

#ifndef QUIETSTAR_EMULATION
QUIETSTAR_LIBRARY_IMPL(QUIETSTAR_OPS, CUDA, m) { QUIETSTAR_IMPLS(m); }
#endif

// CPU tensors reach the same validation, then the error that names impl="torch" (or, emulated, the kernels).
QUIETSTAR_LIBRARY_IMPL(QUIETSTAR_OPS, CPU, m) { QUIETSTAR_IMPLS(m); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "quietstar_fast CUDA kernels; importing this module registers torch.ops.quietstar_fast.*";
}
