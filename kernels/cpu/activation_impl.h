// The activation kernels as templates over an Ops struct (simd_ops.h), instantiated once per level:
// include inside the level's target region, after simd_math.h.
#pragma once

namespace kiln {
namespace {

template <class O, Activation A>
inline typename O::V activate(typename O::V x) {
  if constexpr (A == Activation::Silu) {
    return silu<O>(x);
  } else if constexpr (A == Activation::Gelu) {
    return gelu_erf<O>(x);
  } else if constexpr (A == Activation::GeluTanh) {
    return gelu_tanh<O>(x);
  } else {
    return O::max(x, O::zero());
  }
}

template <class O, Activation A>
void gated_rows(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn) {
  constexpr int N = O::kLanes;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* gate = gate_up + t * 2 * ffn;
    const float* up = gate + ffn;
    float* o = out + t * ffn;
    int64_t i = 0;
    for (; i + N <= ffn; i += N) O::store(o + i, O::mul(activate<O, A>(O::load(gate + i)), O::load(up + i)));
    if (i < ffn) {
      const int n = int(ffn - i);
      O::store_partial(o + i, O::mul(activate<O, A>(O::load_partial(gate + i, n)), O::load_partial(up + i, n)), n);
    }
  }
}

template <class O, Activation A>
void bias_rows(float* x, const float* bias, int64_t n_tokens, int64_t dim) {
  constexpr int N = O::kLanes;
  for (int64_t t = 0; t < n_tokens; ++t) {
    float* row = x + t * dim;
    int64_t i = 0;
    for (; i + N <= dim; i += N) {
      const typename O::V v = bias ? O::add(O::load(row + i), O::load(bias + i)) : O::load(row + i);
      O::store(row + i, activate<O, A>(v));
    }
    if (i < dim) {
      const int n = int(dim - i);
      const typename O::V v = bias ? O::add(O::load_partial(row + i, n), O::load_partial(bias + i, n))
                                   : O::load_partial(row + i, n);
      O::store_partial(row + i, activate<O, A>(v), n);
    }
  }
}

template <class O>
void gated_activation_impl(const float* gate_up, float* out, int64_t n_tokens, int64_t ffn, Activation act) {
  switch (act) {
    case Activation::Silu: return gated_rows<O, Activation::Silu>(gate_up, out, n_tokens, ffn);
    case Activation::Gelu: return gated_rows<O, Activation::Gelu>(gate_up, out, n_tokens, ffn);
    case Activation::GeluTanh: return gated_rows<O, Activation::GeluTanh>(gate_up, out, n_tokens, ffn);
    case Activation::Relu: return gated_rows<O, Activation::Relu>(gate_up, out, n_tokens, ffn);
  }
}

template <class O>
void bias_activation_impl(float* x, const float* bias, int64_t n_tokens, int64_t dim, Activation act) {
  switch (act) {
    case Activation::Silu: return bias_rows<O, Activation::Silu>(x, bias, n_tokens, dim);
    case Activation::Gelu: return bias_rows<O, Activation::Gelu>(x, bias, n_tokens, dim);
    case Activation::GeluTanh: return bias_rows<O, Activation::GeluTanh>(x, bias, n_tokens, dim);
    case Activation::Relu: return bias_rows<O, Activation::Relu>(x, bias, n_tokens, dim);
  }
}

}  // namespace
}  // namespace kiln
