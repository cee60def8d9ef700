#include "kernels/cpu/norm.h"

#include <cmath>

#include "engine/error.h"

namespace kiln {
namespace {

constexpr int kLanes = 16;  // partial sums the compiler keeps in vector registers

void check_args(const char* what, const float* x, const float* weight, const float* y, int64_t n_tokens,
                int64_t dim, float eps) {
  KILN_CHECK(n_tokens >= 0 && dim > 0, "{}: bad shape [{}, {}]", what, n_tokens, dim);
  KILN_CHECK(n_tokens == 0 || (x != nullptr && weight != nullptr && y != nullptr), "{}: null input, weight or output",
             what);
  KILN_CHECK(eps >= 0 && std::isfinite(eps), "{}: eps is {}, it must be finite and >= 0", what, eps);
}

// Sum of f(x[i]) over [0, n) in kLanes independent partial sums (vectorizable without reassociation).
template <typename F>
float lane_sum(const float* x, int64_t n, F f) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += f(x[i + l]);
  float sum = 0;
  for (; i < n; ++i) sum += f(x[i]);
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  return sum;
}

}  // namespace

void rms_norm(const float* x, const float* weight, float* y, int64_t n_tokens, int64_t dim, float eps) {
  check_args("rms_norm", x, weight, y, n_tokens, dim, eps);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* xt = x + t * dim;
    float* yt = y + t * dim;
    const float sum_sq = lane_sum(xt, dim, [](float v) { return v * v; });
    const float scale = 1.0f / std::sqrt(sum_sq / float(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) yt[i] = xt[i] * scale * weight[i];
  }
}

void layer_norm(const float* x, const float* weight, const float* bias, float* y, int64_t n_tokens, int64_t dim,
                float eps) {
  check_args("layer_norm", x, weight, y, n_tokens, dim, eps);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* xt = x + t * dim;
    float* yt = y + t * dim;
    const float mean = lane_sum(xt, dim, [](float v) { return v; }) / float(dim);
    // Two passes: the variance about the mean, not E[x^2] - mean^2, which cancels badly.
    const float var = lane_sum(xt, dim, [mean](float v) { return (v - mean) * (v - mean); }) / float(dim);
    const float scale = 1.0f / std::sqrt(var + eps);
    if (bias != nullptr) {
      for (int64_t i = 0; i < dim; ++i) yt[i] = (xt[i] - mean) * scale * weight[i] + bias[i];
    } else {
      for (int64_t i = 0; i < dim; ++i) yt[i] = (xt[i] - mean) * scale * weight[i];
    }
  }
}

void rms_norm_reference(const float* x, const float* weight, float* y, int64_t n_tokens, int64_t dim, float eps) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    double sum_sq = 0;
    for (int64_t i = 0; i < dim; ++i) sum_sq += double(x[t * dim + i]) * double(x[t * dim + i]);
    const double scale = 1.0 / std::sqrt(sum_sq / double(dim) + double(eps));
    for (int64_t i = 0; i < dim; ++i) y[t * dim + i] = float(double(x[t * dim + i]) * scale * double(weight[i]));
  }
}

void layer_norm_reference(const float* x, const float* weight, const float* bias, float* y, int64_t n_tokens,
                          int64_t dim, float eps) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    double mean = 0;
    for (int64_t i = 0; i < dim; ++i) mean += double(x[t * dim + i]);
    mean /= double(dim);
    double var = 0;
    for (int64_t i = 0; i < dim; ++i) var += (double(x[t * dim + i]) - mean) * (double(x[t * dim + i]) - mean);
    var /= double(dim);
    const double scale = 1.0 / std::sqrt(var + double(eps));
    for (int64_t i = 0; i < dim; ++i) {
      const double v = (double(x[t * dim + i]) - mean) * scale * double(weight[i]);
      y[t * dim + i] = float(bias != nullptr ? v + double(bias[i]) : v);
    }
  }
}

}  // namespace kiln
