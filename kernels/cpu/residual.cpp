#include "kernels/cpu/residual.h"

#include "engine/error.h"

namespace kiln {
namespace {

// One loop per combination of present inputs, so each is a plain vectorizable loop.
template <bool kABias, bool kB, bool kBBias>
void add_rows(float* residual, const float* a, const float* a_bias, const float* b, const float* b_bias,
              int64_t n_tokens, int64_t dim) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    float* r = residual + t * dim;
    const float* at = a + t * dim;
    const float* bt = kB ? b + t * dim : nullptr;
    for (int64_t i = 0; i < dim; ++i) {
      float update = at[i];
      if constexpr (kABias) update += a_bias[i];
      if constexpr (kB) {
        float other = bt[i];
        if constexpr (kBBias) other += b_bias[i];
        update += other;
      }
      r[i] += update;
    }
  }
}

}  // namespace

void residual_add_bias(float* residual, const float* a, const float* a_bias, const float* b, const float* b_bias,
                       int64_t n_tokens, int64_t dim) {
  KILN_CHECK(n_tokens >= 0 && dim >= 0, "residual_add_bias: bad shape [{}, {}]", n_tokens, dim);
  if (n_tokens * dim == 0) return;
  KILN_CHECK(residual != nullptr && a != nullptr, "residual_add_bias: residual and a must not be null");
  if (b == nullptr) {
    if (a_bias != nullptr) return add_rows<true, false, false>(residual, a, a_bias, b, b_bias, n_tokens, dim);
    return add_rows<false, false, false>(residual, a, a_bias, b, b_bias, n_tokens, dim);
  }
  if (a_bias != nullptr) {
    if (b_bias != nullptr) return add_rows<true, true, true>(residual, a, a_bias, b, b_bias, n_tokens, dim);
    return add_rows<true, true, false>(residual, a, a_bias, b, b_bias, n_tokens, dim);
  }
  if (b_bias != nullptr) return add_rows<false, true, true>(residual, a, a_bias, b, b_bias, n_tokens, dim);
  return add_rows<false, true, false>(residual, a, a_bias, b, b_bias, n_tokens, dim);
}

void residual_add_bias_reference(float* residual, const float* a, const float* a_bias, const float* b,
                                 const float* b_bias, int64_t n_tokens, int64_t dim) {
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t i = 0; i < dim; ++i) {
      double sum = double(residual[t * dim + i]) + double(a[t * dim + i]);
      if (a_bias != nullptr) sum += double(a_bias[i]);
      if (b != nullptr) sum += double(b[t * dim + i]) + (b_bias != nullptr ? double(b_bias[i]) : 0.0);
      residual[t * dim + i] = float(sum);
    }
}

}  // namespace kiln
