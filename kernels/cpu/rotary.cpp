#include "kernels/cpu/rotary.h"

#include <cmath>

#include "engine/error.h"

namespace kiln {
namespace {

constexpr int kMaxRotaryDim = 1024;  // bounds the per-call tables on the stack

void check_params(const RotaryParams& p) {
  KILN_CHECK(p.rotary_dim > 0 && p.rotary_dim % 2 == 0 && p.rotary_dim <= kMaxRotaryDim,
             "rotary: rotary_dim {} must be even and in (0, {}]", p.rotary_dim, kMaxRotaryDim);
  KILN_CHECK(p.theta > 0 && std::isfinite(p.theta), "rotary: theta is {}, it must be positive", p.theta);
  KILN_CHECK(p.position_scale > 0 && std::isfinite(p.position_scale),
             "rotary: position_scale is {}, it must be positive", p.position_scale);
}

void check_args(const float* x, const int32_t* positions, int64_t n_tokens, int n_heads, int head_dim,
                const RotaryParams& p) {
  KILN_CHECK(n_tokens >= 0 && n_heads > 0 && head_dim > 0, "rotary: bad shape [{}, {}, {}]", n_tokens, n_heads,
             head_dim);
  check_params(p);
  KILN_CHECK(p.rotary_dim <= head_dim, "rotary: rotary_dim {} is larger than head_dim {}", p.rotary_dim, head_dim);
  KILN_CHECK(n_tokens == 0 || (x != nullptr && positions != nullptr), "rotary: null input or positions");
  for (int64_t t = 0; t < n_tokens; ++t)
    KILN_CHECK(positions[t] >= 0, "rotary: position {} of token {} is negative", positions[t], t);
}

// inv_freq: [rotary_dim / 2], the angle per position of each pair.
void inverse_frequencies(const RotaryParams& p, double* inv_freq) {
  for (int i = 0; i < p.rotary_dim / 2; ++i)
    inv_freq[i] = std::pow(double(p.theta), -2.0 * i / p.rotary_dim) / double(p.position_scale);
}

// cos_t, sin_t: [rotary_dim / 2] at `position`.
void angles_at(const double* inv_freq, int half, int64_t position, float* cos_t, float* sin_t) {
  for (int i = 0; i < half; ++i) {
    const double angle = double(position) * inv_freq[i];
    cos_t[i] = float(std::cos(angle));
    sin_t[i] = float(std::sin(angle));
  }
}

// Rotates the pair (a, b) by the angle with cosine c and sine s.
inline void rotate(float& a, float& b, float c, float s) {
  const float a0 = a, b0 = b;
  a = a0 * c - b0 * s;
  b = b0 * c + a0 * s;
}

}  // namespace

RotaryTable::RotaryTable(const RotaryParams& params, int64_t n_positions)
    : params_(params), n_positions_(n_positions) {
  check_params(params);
  KILN_CHECK(n_positions >= 0 && n_positions <= (int64_t(1) << 31), "rotary table: {} positions", n_positions);
  values_.resize(size_t(n_positions * params.rotary_dim));
  double inv_freq[kMaxRotaryDim / 2];
  inverse_frequencies(params, inv_freq);
  for (int64_t p = 0; p < n_positions; ++p)
    angles_at(inv_freq, params.rotary_dim / 2, p, values_.data() + p * params.rotary_dim,
              values_.data() + p * params.rotary_dim + params.rotary_dim / 2);
}

void rotary(float* x, const int32_t* positions, int64_t n_tokens, int n_heads, int head_dim,
            const RotaryParams& params, const RotaryTable* table) {
  check_args(x, positions, n_tokens, n_heads, head_dim, params);
  if (table != nullptr)
    KILN_CHECK(table->params().rotary_dim == params.rotary_dim && table->params().theta == params.theta &&
                   table->params().position_scale == params.position_scale,
               "rotary: the table was made for other rotary parameters");
  const int half = params.rotary_dim / 2;
  double inv_freq[kMaxRotaryDim / 2];
  bool have_inv_freq = false;
  float own_cos[kMaxRotaryDim / 2], own_sin[kMaxRotaryDim / 2];
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* cos_t = own_cos;
    const float* sin_t = own_sin;
    if (table != nullptr && positions[t] < table->n_positions()) {
      cos_t = table->cos(positions[t]);
      sin_t = table->sin(positions[t]);
    } else {
      if (!have_inv_freq) inverse_frequencies(params, inv_freq);
      have_inv_freq = true;
      angles_at(inv_freq, half, positions[t], own_cos, own_sin);
    }
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * head_dim;
      if (params.mode == RotaryMode::RotateHalf) {
        for (int i = 0; i < half; ++i) rotate(v[i], v[i + half], cos_t[i], sin_t[i]);
      } else {
        for (int i = 0; i < half; ++i) rotate(v[2 * i], v[2 * i + 1], cos_t[i], sin_t[i]);
      }
    }
  }
}

void rotary_reference(float* x, const int32_t* positions, int64_t n_tokens, int n_heads, int head_dim,
                      const RotaryParams& params) {
  check_args(x, positions, n_tokens, n_heads, head_dim, params);
  const int half = params.rotary_dim / 2;
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < half; ++i) {
        const double angle = double(positions[t]) / double(params.position_scale) *
                             std::pow(double(params.theta), -2.0 * i / params.rotary_dim);
        float* v = x + (t * n_heads + h) * head_dim;
        const int ia = params.mode == RotaryMode::RotateHalf ? i : 2 * i;
        const int ib = params.mode == RotaryMode::RotateHalf ? i + half : 2 * i + 1;
        const double a = v[ia], b = v[ib];
        v[ia] = float(a * std::cos(angle) - b * std::sin(angle));
        v[ib] = float(b * std::cos(angle) + a * std::sin(angle));
      }
}

}  // namespace kiln
