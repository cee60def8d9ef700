// The MLP activation formulas on the device, shared by the activation kernels and the GEMV's gated
// epilogue so both compute the same values (the formulas of kernels/cuda/activation.h).
#pragma once

#include "kernels/cuda/activation.h"

namespace kiln::cuda {

template <Activation kAct>
__device__ __forceinline__ float activate(float x) {
  if constexpr (kAct == Activation::Gelu) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
  else if constexpr (kAct == Activation::GeluTanh) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
  } else if constexpr (kAct == Activation::Relu) return x > 0.0f ? x : 0.0f;
  else return x / (1.0f + expf(-x));
}

// The same, the kind chosen at run time (an epilogue, once per output).
__device__ __forceinline__ float activate(Activation act, float x) {
  switch (act) {
    case Activation::Gelu: return activate<Activation::Gelu>(x);
    case Activation::GeluTanh: return activate<Activation::GeluTanh>(x);
    case Activation::Relu: return activate<Activation::Relu>(x);
    default: return activate<Activation::Silu>(x);
  }
}

}  // namespace kiln::cuda
