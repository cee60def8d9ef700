#include "kernels/cpu/quantize.h"

#include <cmath>
#include <cstring>

#include "engine/error.h"

namespace kiln {
namespace {

int64_t round_up(int64_t value, int64_t to) { return (value + to - 1) / to * to; }

// Offsets of the arrays in the buffer, each 64-byte aligned.
struct Layout {
  int64_t k_pad, n_groups, q, scale, corr, scale4, corr4, bytes;
};

Layout layout_of(int64_t n_tokens, int64_t n_in, int64_t group_size) {
  KILN_CHECK(n_tokens >= 0 && n_in > 0 && group_size > 0 && n_in % group_size == 0,
             "cannot quantize activations of {} x {} in groups of {}: n_in must be a positive multiple of "
             "the group size",
             n_tokens, n_in, group_size);
  Layout l{};
  l.k_pad = round_up(n_in, 64);
  l.n_groups = n_in / group_size;
  const bool lanes = group_size % 4 == 0;
  l.q = 0;
  l.scale = round_up(l.q + n_tokens * l.k_pad, 64);
  l.corr = round_up(l.scale + n_tokens * l.n_groups * 4, 64);
  l.scale4 = round_up(l.corr + n_tokens * l.n_groups * 4, 64);
  l.corr4 = round_up(l.scale4 + (lanes ? n_tokens * l.k_pad : 0), 64);
  l.bytes = round_up(l.corr4 + (lanes ? n_tokens * l.k_pad : 0), 64);
  return l;
}

// Round to nearest, ties to even (as the SIMD float-to-int conversion does) for |v| < 2^22.
inline float round_even(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

}  // namespace

size_t quantized_activations_bytes(int64_t n_tokens, int64_t n_in, int64_t group_size) {
  return size_t(layout_of(n_tokens, n_in, group_size).bytes);
}

QuantizedActivations quantized_activations_layout(int64_t n_tokens, int64_t n_in, int64_t group_size,
                                                  void* buffer) {
  const Layout l = layout_of(n_tokens, n_in, group_size);
  auto* base = static_cast<char*>(buffer);
  QuantizedActivations qa;
  qa.n_tokens = n_tokens;
  qa.n_in = n_in;
  qa.group_size = group_size;
  qa.k_pad = l.k_pad;
  qa.n_groups = l.n_groups;
  qa.q = reinterpret_cast<int8_t*>(base + l.q);
  qa.scale = reinterpret_cast<float*>(base + l.scale);
  qa.corr = reinterpret_cast<int32_t*>(base + l.corr);
  if (group_size % 4 == 0) {
    qa.scale4 = reinterpret_cast<float*>(base + l.scale4);
    qa.corr4 = reinterpret_cast<int32_t*>(base + l.corr4);
  }
  return qa;
}

namespace quantize_detail {

void quantize_tokens_scalar(const float* x, const QuantizedActivations& qa, int64_t token_begin, int64_t token_end) {
  const int64_t gs = qa.group_size;
  for (int64_t t = token_begin; t < token_end; ++t) {
    const float* xt = x + t * qa.n_in;
    int8_t* q = qa.q + t * qa.k_pad;
    for (int64_t g = 0; g < qa.n_groups; ++g) {
      const float* xg = xt + g * gs;
      int8_t* qg = q + g * gs;
      float amax = 0;
      float poison = 0;  // nan when the group holds an inf or a nan
      for (int64_t i = 0; i < gs; ++i) {
        const float a = std::fabs(xg[i]);
        amax = a > amax ? a : amax;
        poison += xg[i] * 0.0f;
      }
      int32_t sum = 0;
      if (poison != 0.0f) {
        amax = NAN;  // a nan scale poisons the group's outputs
        std::memset(qg, 0, size_t(gs));
      } else {
        const float inv = amax > 0 ? 127.0f / amax : 0.0f;
        for (int64_t i = 0; i < gs; ++i) {
          const float r = round_even(xg[i] * inv);
          const int8_t v = int8_t(int32_t(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r)));
          qg[i] = v;
          sum += v;
        }
      }
      qa.scale[t * qa.n_groups + g] = amax / 127.0f;
      qa.corr[t * qa.n_groups + g] = -128 * sum;
    }
    std::memset(q + qa.n_in, 0, size_t(qa.k_pad - qa.n_in));
    if (qa.scale4 == nullptr) continue;
    float* scale4 = qa.scale4 + t * (qa.k_pad / 4);
    int32_t* corr4 = qa.corr4 + t * (qa.k_pad / 4);
    for (int64_t g = 0; g < qa.n_groups; ++g)
      for (int64_t l = g * gs / 4; l < (g + 1) * gs / 4; ++l) scale4[l] = qa.scale[t * qa.n_groups + g];
    for (int64_t l = qa.n_in / 4; l < qa.k_pad / 4; ++l) scale4[l] = 0.0f;
    for (int64_t l = 0; l < qa.k_pad / 4; ++l)
      corr4[l] = -128 * (q[4 * l] + q[4 * l + 1] + q[4 * l + 2] + q[4 * l + 3]);
  }
}

}  // namespace quantize_detail

void quantize_activation_tokens(const float* x, const QuantizedActivations& qa, int64_t token_begin,
                                int64_t token_end, CpuLevel level) {
  if (level >= CpuLevel::Avx512) return quantize_detail::quantize_tokens_avx512(x, qa, token_begin, token_end);
  quantize_detail::quantize_tokens_scalar(x, qa, token_begin, token_end);
}

QuantizedActivations quantize_activations(const float* x, int64_t n_tokens, int64_t n_in, int64_t group_size,
                                          void* buffer, CpuLevel level) {
  KILN_CHECK(level <= cpu_level_supported(), "quantize_activations: CPU level {} asked for, this CPU runs at most {}",
             cpu_level_name(level), cpu_level_name(cpu_level_supported()));
  QuantizedActivations qa = quantized_activations_layout(n_tokens, n_in, group_size, buffer);
  quantize_activation_tokens(x, qa, 0, n_tokens, level);
  return qa;
}

}  // namespace kiln
