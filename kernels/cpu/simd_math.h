// Vector exp and the MLP activations, written once against the simd_ops.h interface. In an AVX file,
// include it inside the target region (after the Ops header), so its templates get that target.
#pragma once

namespace kiln {
namespace {

// e^x, within about 2 ulp for x in [-87.3, 88] (inputs are clamped to that range, so it never
// overflows: SiLU and the GELUs only need it bounded). Cody-Waite reduction x = n ln2 + r with
// |r| <= ln2 / 2, then the degree-7 Taylor polynomial of e^r, whose truncation error is below 6e-9.
template <class O>
inline typename O::V exp_approx(typename O::V x) {
  using V = typename O::V;
  x = O::min(O::max(x, O::set1(-87.33654f)), O::set1(88.0f));
  const V n = O::round(O::mul(x, O::set1(1.44269504088896341f)));
  V r = O::fma(n, O::set1(-0.693359375f), x);  // ln2 in two parts: the first is exact in f32
  r = O::fma(n, O::set1(2.12194440054690583e-4f), r);
  V p = O::set1(1.0f / 5040);
  p = O::fma(p, r, O::set1(1.0f / 720));
  p = O::fma(p, r, O::set1(1.0f / 120));
  p = O::fma(p, r, O::set1(1.0f / 24));
  p = O::fma(p, r, O::set1(1.0f / 6));
  p = O::fma(p, r, O::set1(0.5f));
  p = O::fma(p, r, O::set1(1.0f));
  p = O::fma(p, r, O::set1(1.0f));
  return O::mul(p, O::pow2i(n));
}

// x * sigmoid(x)
template <class O>
inline typename O::V silu(typename O::V x) {
  return O::div(x, O::add(O::set1(1.0f), exp_approx<O>(O::sub(O::zero(), x))));
}

// 0.5 x (1 + erf(x / sqrt 2)). erfc(z) = P(t) e^{-z^2}, t = 1 / (1 + 0.3275911 z) (Abramowitz and
// Stegun 7.1.26, |error| <= 1.5e-7); for x < 0 the result is 0.5 x erfc(|x| / sqrt 2) directly, with
// no cancellation.
template <class O>
inline typename O::V gelu_erf(typename O::V x) {
  using V = typename O::V;
  const V z = O::mul(O::abs(x), O::set1(0.70710678118654752f));
  const V t = O::div(O::set1(1.0f), O::fma(z, O::set1(0.3275911f), O::set1(1.0f)));
  V p = O::set1(1.061405429f);
  p = O::fma(p, t, O::set1(-1.453152027f));
  p = O::fma(p, t, O::set1(1.421413741f));
  p = O::fma(p, t, O::set1(-0.284496736f));
  p = O::fma(p, t, O::set1(0.254829592f));
  const V erfc = O::mul(O::mul(p, t), exp_approx<O>(O::sub(O::zero(), O::mul(z, z))));
  const V half_x = O::mul(x, O::set1(0.5f));
  return O::select_negative(x, O::mul(half_x, erfc), O::mul(half_x, O::sub(O::set1(2.0f), erfc)));
}

// 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), computed as x / (1 + e^{-2u}).
template <class O>
inline typename O::V gelu_tanh(typename O::V x) {
  using V = typename O::V;
  const V x3 = O::mul(O::mul(x, x), x);
  const V u = O::mul(O::set1(0.79788456080286536f), O::fma(x3, O::set1(0.044715f), x));
  return O::div(x, O::add(O::set1(1.0f), exp_approx<O>(O::mul(u, O::set1(-2.0f)))));
}

}  // namespace
}  // namespace kiln
