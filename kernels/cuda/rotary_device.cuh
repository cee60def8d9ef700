// The rotary embedding of one token's fused QKV row, shared by the contiguous KV append (rotary.cu) and
// the paged store (paged_rotary_kv_store in paged_kv_store.cu): the block computes each pair's cosine and
// sine once (in double, rounded once, as on the CPU), then hands every query and key value, rotated or
// passed through, and every value-head value to the caller's stores.
#pragma once

#include <cstdint>

#include "kernels/cuda/rotary.h"

namespace kiln::cuda {

struct RotaryShape {
  int n_heads, n_kv_heads, head_dim, rotary_dim;
  double theta, position_scale;
};

// Throws kiln::Error unless the rotary settings are usable (nothing to check for RotaryMode::None).
void check_rotary(RotaryMode mode, int rotary_dim, int head_dim, float theta, float position_scale);

// Shared floats the block needs for rotary_row (cos and sin of every pair).
inline int rotary_shared_floats(RotaryMode mode, int rotary_dim) { return mode == RotaryMode::None ? 0 : rotary_dim; }

// row: [n_heads + 2 n_kv_heads, head_dim] of one token; slot s < n_heads + n_kv_heads is query head s or key
// head s - n_heads. store_qk(slot, d, value) and store_v(kv_head, d, value) are called once per value, except
// that query values past rotary_dim go to store_qk only when `pass_q` (an in-place query needs no copy).
// A pair's two values are read and written by one thread, so store_qk may write into `row` itself.
// cs: rotary_shared_floats shared floats; every thread of the block calls this.
template <RotaryMode kMode, typename StoreQk, typename StoreV>
__device__ void rotary_row(const float* row, int64_t position, const RotaryShape& s, bool pass_q, float* cs,
                           StoreQk store_qk, StoreV store_v) {
  const int n_slots = s.n_heads + s.n_kv_heads, half = s.rotary_dim / 2;
  if constexpr (kMode != RotaryMode::None) {
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      const double angle = double(position) / s.position_scale * pow(s.theta, -2.0 * i / s.rotary_dim);
      double sn, c;
      sincos(angle, &sn, &c);
      cs[i] = float(c);
      cs[half + i] = float(sn);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n_slots * half; e += blockDim.x) {
      const int slot = e / half, i = e % half;
      const int ia = kMode == RotaryMode::RotateHalf ? i : 2 * i;
      const int ib = kMode == RotaryMode::RotateHalf ? i + half : 2 * i + 1;
      const float cf = cs[i], sf = cs[half + i];
      const float a = row[slot * s.head_dim + ia], b = row[slot * s.head_dim + ib];
      store_qk(slot, ia, a * cf - b * sf);
      store_qk(slot, ib, b * cf + a * sf);
    }
  }
  const int rotated = kMode == RotaryMode::None ? 0 : s.rotary_dim;
  const int pass = s.head_dim - rotated;  // values per head copied as they are
  const int first_slot = pass_q ? 0 : s.n_heads;
  for (int e = threadIdx.x; e < (n_slots - first_slot) * pass; e += blockDim.x) {
    const int slot = first_slot + e / pass, d = rotated + e % pass;
    store_qk(slot, d, row[slot * s.head_dim + d]);
  }
  const float* v = row + int64_t(n_slots) * s.head_dim;
  for (int e = threadIdx.x; e < s.n_kv_heads * s.head_dim; e += blockDim.x)
    store_v(e / s.head_dim, e % s.head_dim, v[e]);
}

}  // namespace kiln::cuda
