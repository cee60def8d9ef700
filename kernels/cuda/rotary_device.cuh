// The rotary embedding of one token's fused QKV row, shared by the contiguous KV append (rotary.cu) and
// the paged store (paged_rotary_kv_store in paged_kv_store.cu): the block computes each pair's cosine and
// sine once (in double, rounded once, as on the CPU), then hands every query and key value, rotated or
// passed through, and every value-head value to the caller's stores. The two halves are separate calls,
// so a kernel can compute the angles while the kernel before it still runs.
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

// Shared floats the block needs for rotary_angles (cos and sin of every pair).
inline int rotary_shared_floats(RotaryMode mode, int rotary_dim) { return mode == RotaryMode::None ? 0 : rotary_dim; }

// Slots of a row a block takes: a few rows, a head a block (blocks enough for the machine); more, 8 heads;
// many (a batch step's prompt rows), the whole row, so that its angles (double-precision pow and sincos)
// are computed once a row rather than once every 8 heads.
inline int rotary_slots_per_block(int64_t n_rows, int n_slots) {
  return n_rows <= 8 ? 1 : n_rows < 256 ? 8 : n_slots;
}

// The cosine and sine of every pair at `position` into cs (rotary_shared_floats shared floats), for
// rotary_apply; no barrier.
template <RotaryMode kMode>
__device__ void rotary_angles(int64_t position, const RotaryShape& s, float* cs) {
  if constexpr (kMode != RotaryMode::None) {
    const int half = s.rotary_dim / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      const double angle = double(position) / s.position_scale * pow(s.theta, -2.0 * i / s.rotary_dim);
      double sn, c;
      sincos(angle, &sn, &c);
      cs[i] = float(c);
      cs[half + i] = float(sn);
    }
  }
}

// row: [n_heads + 2 n_kv_heads, head_dim] of one token, in slots of head_dim values: slot s < n_heads is query
// head s, then come the key heads and the value heads. The slots [slot_begin, slot_end) are handed out:
// store_qk(slot, d, value) for query and key slots (rotated, or passed through past rotary_dim),
// store_v(kv_head, d, value) for value slots, once per value, except that query values past rotary_dim go
// to store_qk only when `pass_q` (an in-place query needs no copy). A pair's two values are read and
// written by one thread, so store_qk may write into `row` itself. cs: what rotary_angles wrote; every thread
// of the block calls this.
template <RotaryMode kMode, typename StoreQk, typename StoreV>
__device__ void rotary_apply(const float* row, const RotaryShape& s, bool pass_q, const float* cs, int slot_begin,
                             int slot_end, StoreQk store_qk, StoreV store_v) {
  const int n_qk = s.n_heads + s.n_kv_heads, half = s.rotary_dim / 2;
  const int qk_end = min(slot_end, n_qk);
  if constexpr (kMode != RotaryMode::None) {
    __syncthreads();  // cs is written
    for (int e = threadIdx.x; e < (qk_end - slot_begin) * half; e += blockDim.x) {
      const int slot = slot_begin + e / half, i = e % half;
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
  const int first_pass = max(slot_begin, pass_q ? 0 : s.n_heads);
  for (int e = threadIdx.x; e < (qk_end - first_pass) * pass; e += blockDim.x) {
    const int slot = first_pass + e / pass, d = rotated + e % pass;
    store_qk(slot, d, row[slot * s.head_dim + d]);
  }
  const int first_v = max(slot_begin, n_qk);
  for (int e = threadIdx.x; e < (slot_end - first_v) * s.head_dim; e += blockDim.x) {
    const int slot = first_v + e / s.head_dim, d = e % s.head_dim;
    store_v(slot - n_qk, d, row[slot * s.head_dim + d]);
  }
}

}  // namespace kiln::cuda
