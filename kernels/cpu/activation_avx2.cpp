// The activations compiled for AVX2 (templates in activation_impl.h).
#include <cmath>
#include <cstdint>

#include "engine/kiln_format.h"
#include "kernels/cpu/activation_kernels.h"
#include "kernels/cpu/simd_config.h"
#include "kernels/cpu/simd_ops.h"

#if KILN_X86_SIMD
#include "kernels/cpu/x86_intrinsics.h"

#include "kernels/cpu/target_avx2_begin.h"
#include "kernels/cpu/simd_avx2.h"
#include "kernels/cpu/simd_ops_avx2.h"
#include "kernels/cpu/simd_math.h"
#include "kernels/cpu/activation_impl.h"

namespace kiln::activation_detail {

void gated_avx2(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn, Activation act) {
  gated_activation_impl<OpsAvx2>(gate_up, out, n_tokens, ffn, act);
}

void bias_avx2(float* x, const float* bias, int64_t n_tokens, int64_t dim, Activation act) {
  bias_activation_impl<OpsAvx2>(x, bias, n_tokens, dim, act);
}

}  // namespace kiln::activation_detail

#include "kernels/cpu/target_end.h"

#else  // no x86 SIMD: cpu_level_supported() never offers this level

#include "kernels/cpu/simd_math.h"
#include "kernels/cpu/activation_impl.h"

namespace kiln::activation_detail {

void gated_avx2(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn, Activation act) {
  gated_activation_impl<OpsScalar>(gate_up, out, n_tokens, ffn, act);
}

void bias_avx2(float* x, const float* bias, int64_t n_tokens, int64_t dim, Activation act) {
  bias_activation_impl<OpsScalar>(x, bias, n_tokens, dim, act);
}

}  // namespace kiln::activation_detail

#endif
