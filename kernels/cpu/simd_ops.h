// One interface over f32 vectors of each level (OpsScalar here; OpsAvx2 / OpsAvx512 in their own
// headers), so the element-wise kernels (activation, attention) are written once as templates.
//
// Every Ops struct has: V, kLanes, zero, set1, load, store, load_partial / store_partial (n < kLanes,
// the rest zero, memory past n untouched), add, sub, mul, div, fma (a * b + c), max, min, abs,
// select_negative (x < 0 ? a : b), round (to nearest even), pow2i (2^n for integral n in [-126, 127]),
// reduce_add, reduce_max, sum_lanes (lane i of the result = the sum of v[i], for kLanes vectors v).
// Internal linkage, so each level's file gets its own copy.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kiln {
namespace {

struct OpsScalar {
  using V = float;
  static constexpr int kLanes = 1;
  static V zero() { return 0.0f; }
  static V set1(float v) { return v; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V load_partial(const float*, int) { return 0.0f; }  // never called: kLanes is 1
  static void store_partial(float*, V, int) {}
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V div(V a, V b) { return a / b; }
  static V fma(V a, V b, V c) { return a * b + c; }  // std::fma is a slow library call without FMA hardware
  static V max(V a, V b) { return a > b ? a : b; }
  static V min(V a, V b) { return a < b ? a : b; }
  static V abs(V a) { return std::fabs(a); }
  static V select_negative(V x, V a, V b) { return x < 0.0f ? a : b; }
  static V round(V a) { return std::nearbyint(a); }
  static V pow2i(V n) {
    const uint32_t bits = uint32_t(int32_t(n) + 127) << 23;
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
  static float reduce_add(V a) { return a; }
  static float reduce_max(V a) { return a; }
  static V sum_lanes(const V* v) { return v[0]; }
};

}  // namespace
}  // namespace kiln
