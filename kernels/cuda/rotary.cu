#include "kernels/cuda/rotary.h"

#include <cmath>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 128;

struct Layout {
  const float* qkv;
  int64_t qkv_stride;
  float* q_out;
  float* k_out;
  float* k_cache;
  float* v_cache;
  int64_t kv_stride;
  int n_heads, n_kv_heads, head_dim, rotary_dim;
  double theta, position_scale;
};

// Writes value v of head slot `slot` (query heads first, then key heads) for token t at `position`.
__device__ __forceinline__ void store_qk(const Layout& l, int64_t t, int64_t position, int slot, int d, float v) {
  if (slot < l.n_heads) {
    l.q_out[(t * l.n_heads + slot) * l.head_dim + d] = v;
  } else {
    const int h = slot - l.n_heads;
    l.k_cache[(h * l.kv_stride + position) * l.head_dim + d] = v;
    if (l.k_out != nullptr) l.k_out[(t * l.n_kv_heads + h) * l.head_dim + d] = v;
  }
}

// One block per token: first the rotated pairs (one angle per pair, shared by every head), then the
// values past rotary_dim and V, copied.
template <RotaryMode kMode>
__global__ void rotary_kv_append_kernel(Layout l, const int32_t* __restrict__ first_position) {
  const int64_t t = blockIdx.x;
  const int64_t position = *first_position + t;
  const float* row = l.qkv + t * l.qkv_stride;  // q heads then k heads: slot s starts at s * head_dim
  const int n_slots = l.n_heads + l.n_kv_heads;
  const int half = l.rotary_dim / 2;
  if constexpr (kMode != RotaryMode::None) {
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      const double angle = double(position) / l.position_scale * pow(l.theta, -2.0 * i / l.rotary_dim);
      double s, c;
      sincos(angle, &s, &c);
      const float cf = float(c), sf = float(s);
      const int ia = kMode == RotaryMode::RotateHalf ? i : 2 * i;
      const int ib = kMode == RotaryMode::RotateHalf ? i + half : 2 * i + 1;
      for (int slot = 0; slot < n_slots; ++slot) {
        const float a = row[slot * l.head_dim + ia], b = row[slot * l.head_dim + ib];
        store_qk(l, t, position, slot, ia, a * cf - b * sf);
        store_qk(l, t, position, slot, ib, b * cf + a * sf);
      }
    }
  }
  const int rotated = kMode == RotaryMode::None ? 0 : l.rotary_dim;
  const int pass = l.head_dim - rotated;  // values per head copied as they are
  for (int e = threadIdx.x; e < n_slots * pass; e += blockDim.x) {
    const int slot = e / pass, d = rotated + e % pass;
    store_qk(l, t, position, slot, d, row[slot * l.head_dim + d]);
  }
  const float* v = row + int64_t(n_slots) * l.head_dim;
  for (int e = threadIdx.x; e < l.n_kv_heads * l.head_dim; e += blockDim.x) {
    const int h = e / l.head_dim, d = e % l.head_dim;
    l.v_cache[(h * l.kv_stride + position) * l.head_dim + d] = v[e];
  }
}

void rotary_kv_append_launch(const RotaryAppendArgs& a) {
  const Layout l{a.qkv,       a.qkv_stride, a.q_out,   a.k_out,      a.k_cache,     a.v_cache,       a.kv_stride,
                 a.n_heads,   a.n_kv_heads, a.head_dim, a.rotary_dim, double(a.theta), double(a.position_scale)};
  const dim3 grid(unsigned(a.n_tokens));
  switch (a.mode) {
    case RotaryMode::None: rotary_kv_append_kernel<RotaryMode::None><<<grid, kThreads, 0, a.stream>>>(l, a.first_position); break;
    case RotaryMode::RotateHalf: rotary_kv_append_kernel<RotaryMode::RotateHalf><<<grid, kThreads, 0, a.stream>>>(l, a.first_position); break;
    case RotaryMode::RotateEveryTwo: rotary_kv_append_kernel<RotaryMode::RotateEveryTwo><<<grid, kThreads, 0, a.stream>>>(l, a.first_position); break;
  }
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rotary_kv_append(const RotaryAppendArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.n_tokens < (int64_t(1) << 31) && a.n_heads > 0 && a.n_kv_heads > 0 && a.head_dim > 0,
             "cuda rotary: bad shape [{}, {} + {}, {}]", a.n_tokens, a.n_heads, a.n_kv_heads, a.head_dim);
  KILN_CHECK(a.qkv_stride >= int64_t(a.n_heads + 2 * a.n_kv_heads) * a.head_dim,
             "cuda rotary: qkv rows of {} values cannot hold {} + 2 x {} heads of {}", a.qkv_stride, a.n_heads,
             a.n_kv_heads, a.head_dim);
  if (a.mode != RotaryMode::None) {
    KILN_CHECK(a.rotary_dim > 0 && a.rotary_dim % 2 == 0 && a.rotary_dim <= a.head_dim,
               "cuda rotary: rotary_dim {} must be even and in (0, head_dim {}]", a.rotary_dim, a.head_dim);
    KILN_CHECK(a.theta > 0 && std::isfinite(a.theta), "cuda rotary: theta is {}, it must be positive", a.theta);
    KILN_CHECK(a.position_scale > 0 && std::isfinite(a.position_scale),
               "cuda rotary: position_scale is {}, it must be positive", a.position_scale);
  }
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.qkv != nullptr && a.q_out != nullptr && a.k_cache != nullptr && a.v_cache != nullptr &&
                 a.first_position != nullptr && a.kv_stride >= a.n_tokens,
             "cuda rotary: null input, output, cache or position, or a cache of {} positions for {} tokens",
             a.kv_stride, a.n_tokens);
  rotary_kv_append_launch(a);
}

}  // namespace kiln::cuda
