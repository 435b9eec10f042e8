// The CUDA sources of csrc/ compiled as host C++ against csrc/emulation/cuda_emulation.h (tests/emulated_cuda.py
// builds this file with -DQUIETSTAR_EMULATION). The ops register as torch.ops.quietstar_fast_emulated, for CPU
// tensors, with the same validation and launch geometry as the real extension.
#include "linear_softmax.cu"
#include "ops.cpp"
#include "thought_attention_bwd.cu"
#include "thought_attention_bwd_fma.cu"
#include "thought_attention_bwd_mma.cu"
#include "thought_attention_fwd.cu"
#include "thought_attention_fwd_fma.cu"
