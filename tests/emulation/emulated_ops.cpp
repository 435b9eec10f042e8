// The CUDA sources of csrc/ compiled as host C++ against csrc/emulation/cuda_emulation.h (tests/emulated_cuda.py
// builds this file with -DQUIETSTAR_EMULATION). The ops register as torch.ops.quietstar_fast_emulated, for CPU
// tensors, with the same validation and launch geometry as the real extension.
#include <cstring>
#include <string>

#include "linear_softmax.cu"
#include "ops.cpp"
#include "thought_attention_bwd.cu"
#include "thought_attention_bwd_fma.cu"
#include "thought_attention_bwd_mma.cu"
#include "thought_attention_fwd.cu"
#include "thought_attention_fwd_fma.cu"

// The kernels launched since the last call, one name per line, for tests/emulated_cuda.py's launched_kernels()
// (read with ctypes: the module's pybind11 entry point belongs to ops.cpp). Returns the text's length; writes at
// most `capacity` bytes and clears the log only when they fit.
extern "C" int quietstar_emulation_launches(char* buffer, int capacity) {
  std::string text;
  for (const std::string& name : quietstar_emulation::launch_log) text += name + "\n";
  if (int(text.size()) <= capacity) {
    std::memcpy(buffer, text.data(), text.size());
    quietstar_emulation::launch_log.clear();
  }
  return int(text.size());
}
