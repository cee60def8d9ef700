// Activations quantized to int8 on the fly for the int8-weight matmul, so its inner loop is an integer
// dot product (VNNI) instead of a convert-and-FMA per weight.
//
// Accuracy: each activation group of group_size values gets scale = max|x| / 127 and
// q = round_to_nearest_even(x * (127 / max|x|)), so |x - q * scale| <= scale / 2 per value (up to f32
// rounding of the two products). A group holding an inf or nan gets q = 0 and a nan scale. A dot product
// with an int8 weight row then moves by at most sum over groups of (scale_x / 2) * sum |w| (the bound
// the tests check). Measured on a 1536 x 576 matmul: for Gaussian activations the outputs' RMS relative
// error is 0.5% (groups of 32) to 0.7% (192), the same as the weights' own int8 rounding; if 1% of the
// activations are 20x outliers it grows to 1.2% (32) .. 2.6% (192), since an outlier coarsens its group.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/cpu_level.h"

namespace kiln {

struct QuantizedActivations {
  int64_t n_tokens = 0;
  int64_t n_in = 0;
  int64_t group_size = 0;
  int64_t k_pad = 0;     // n_in rounded up to 64, the row stride of q
  int64_t n_groups = 0;  // n_in / group_size
  int8_t* q = nullptr;         // [n_tokens, k_pad], zero past n_in
  float* scale = nullptr;      // [n_tokens, n_groups]: x ~= q * scale
  int32_t* corr = nullptr;     // [n_tokens, n_groups]: -128 * (sum of q over the group)
  // Per 4 consecutive values (one 32-bit SIMD lane): the group's scale and -128 * (sum of the 4 q).
  // Only when group_size % 4 == 0, else nullptr. Zero past n_in.
  float* scale4 = nullptr;     // [n_tokens, k_pad / 4]
  int32_t* corr4 = nullptr;    // [n_tokens, k_pad / 4]
};

// Bytes of the buffer quantize_activations needs.
size_t quantized_activations_bytes(int64_t n_tokens, int64_t n_in, int64_t group_size);

// x: [n_tokens, n_in] f32 · buffer: quantized_activations_bytes(...) bytes, 64-byte aligned.
// n_in % group_size must be 0. The result points into buffer. Every level gives the same bits.
QuantizedActivations quantize_activations(const float* x, int64_t n_tokens, int64_t n_in, int64_t group_size,
                                          void* buffer, CpuLevel level = cpu_level_default());

// The two halves of quantize_activations, so tokens can be quantized on several threads: lay the
// arrays out in buffer, then fill tokens [token_begin, token_end) of x: [n_tokens, n_in].
QuantizedActivations quantized_activations_layout(int64_t n_tokens, int64_t n_in, int64_t group_size,
                                                  void* buffer);
void quantize_activation_tokens(const float* x, const QuantizedActivations& qa, int64_t token_begin,
                                int64_t token_end, CpuLevel level = cpu_level_default());

namespace quantize_detail {  // the level implementations
void quantize_tokens_scalar(const float* x, const QuantizedActivations& qa, int64_t token_begin, int64_t token_end);
void quantize_tokens_avx512(const float* x, const QuantizedActivations& qa, int64_t token_begin, int64_t token_end);
}  // namespace quantize_detail

}  // namespace kiln
