#include "kernels/cpu/activation.h"

#include <cmath>

#include "engine/error.h"
#include "kernels/cpu/activation_kernels.h"
#include "kernels/cpu/simd_ops.h"
#include "kernels/cpu/simd_math.h"
#include "kernels/cpu/activation_impl.h"

namespace kiln {
namespace {

void check_args(const char* what, const void* a, const void* b, int64_t n_tokens, int64_t dim, CpuLevel level) {
  KILN_CHECK(n_tokens >= 0 && dim >= 0, "{}: bad shape [{}, {}]", what, n_tokens, dim);
  KILN_CHECK(n_tokens * dim == 0 || (a != nullptr && b != nullptr), "{}: null input or output", what);
  KILN_CHECK(level <= cpu_level_supported(), "{}: CPU level {} asked for, but this CPU runs at most {}", what,
             cpu_level_name(level), cpu_level_name(cpu_level_supported()));
}

double reference_activation(double x, Activation act) {
  switch (act) {
    case Activation::Gelu: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case Activation::GeluTanh: {
      const double u = std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
      return 0.5 * x * (1.0 + std::tanh(u));
    }
    case Activation::Relu: return x > 0 ? x : 0.0;
    case Activation::Silu: return x / (1.0 + std::exp(-x));
  }
  return x;
}

}  // namespace

void gated_activation(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn, Activation act,
                      CpuLevel level) {
  check_args("gated_activation", gate_up, out, n_tokens, ffn, level);
  switch (level) {
    case CpuLevel::Avx512:
    case CpuLevel::Amx: return activation_detail::gated_avx512(gate_up, out, n_tokens, ffn, act);
    case CpuLevel::Avx2: return activation_detail::gated_avx2(gate_up, out, n_tokens, ffn, act);
    case CpuLevel::Scalar: return gated_activation_impl<OpsScalar>(gate_up, out, n_tokens, ffn, act);
  }
}

void bias_activation(float* x, const float* bias, int64_t n_tokens, int64_t dim, Activation act, CpuLevel level) {
  check_args("bias_activation", x, x, n_tokens, dim, level);
  switch (level) {
    case CpuLevel::Avx512:
    case CpuLevel::Amx: return activation_detail::bias_avx512(x, bias, n_tokens, dim, act);
    case CpuLevel::Avx2: return activation_detail::bias_avx2(x, bias, n_tokens, dim, act);
    case CpuLevel::Scalar: return bias_activation_impl<OpsScalar>(x, bias, n_tokens, dim, act);
  }
}

void gated_activation_reference(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn, Activation act) {
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t i = 0; i < ffn; ++i)
      out[t * ffn + i] =
          float(reference_activation(gate_up[t * 2 * ffn + i], act) * double(gate_up[t * 2 * ffn + ffn + i]));
}

void bias_activation_reference(float* x, const float* bias, int64_t n_tokens, int64_t dim, Activation act) {
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t i = 0; i < dim; ++i) {
      const double v = double(x[t * dim + i]) + (bias ? double(bias[i]) : 0.0);
      x[t * dim + i] = float(reference_activation(v, act));
    }
}

}  // namespace kiln
