// Prints the dynamic shared memory each CUDA kernel instantiation asks for at launch ("kernel,dtype,head_dim,bytes"
// per line), which the nvcc build cannot report: scripts/static_sm90.py compiles this file as host C++ against the
// emulation headers (the layouts are the kernels' own constexpr structs) and adds the numbers to the evidence.
#include <cstdio>

#include "linear_softmax.cu"
#include "thought_attention_bwd.cu"
#include "thought_attention_bwd_fma.cu"
#include "thought_attention_bwd_mma.cu"
#include "thought_attention_fwd.cu"
#include "thought_attention_fwd_fma.cu"

namespace {

template <typename T>
const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, __half>) return "float16";
  return "bfloat16";
}

template <template <typename, int> class Layout, typename T, int... Ds>
void print_head_dims(const char* kernel) {
  ((std::printf("%s,%s,%d,%lld\n", kernel, dtype_name<T>(), Ds, static_cast<long long>(Layout<T, Ds>::kBytes))),
   ...);
}

template <template <typename, int> class Layout>
void print_tensor_core(const char* kernel) {
  print_head_dims<Layout, __nv_bfloat16, 64, 96, 128>(kernel);
  print_head_dims<Layout, __half, 64, 96, 128>(kernel);
}

template <template <typename, int> class Layout>
void print_fma(const char* kernel) {
  print_head_dims<Layout, __nv_bfloat16, 64, 128>(kernel);
  print_head_dims<Layout, __half, 64, 128>(kernel);
  print_head_dims<Layout, float, 64, 128>(kernel);
}

}  // namespace

int main() {
  using namespace quietstar;
  print_tensor_core<TensorCoreForward>("thought_attention_fwd_mma");
  print_tensor_core<TensorCoreDq>("thought_attention_bwd_dq_mma");
  print_tensor_core<TensorCoreDkDv>("thought_attention_bwd_prefix_dkdv_mma");
  print_tensor_core<StreamDkDv>("thought_attention_bwd_stream_dkdv_mma");
  print_fma<ForwardTiles>("thought_attention_fwd_fma");
  print_fma<DqTiles>("thought_attention_bwd_dq_fma");
  print_fma<PrefixDkDvTiles>("thought_attention_bwd_prefix_dkdv_fma");
  for (const char* kernel : {"linear_softmax_fwd", "linear_softmax_grad"}) {  // one layout serves both
    std::printf("%s,float32,,%lld\n", kernel, static_cast<long long>(LogitTiles<float>::bytes()));
    std::printf("%s,float16,,%lld\n", kernel, static_cast<long long>(LogitTiles<__half>::bytes()));
    std::printf("%s,bfloat16,,%lld\n", kernel, static_cast<long long>(LogitTiles<__nv_bfloat16>::bytes()));
  }
  return 0;
}
