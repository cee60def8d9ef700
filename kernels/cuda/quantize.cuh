// Activations quantized to int8 per group on the device, bit for bit as kernels/cpu/quantize.h does it,
// so the int8-weight GEMV (an integer dot product per group, __dp4a) agrees with the CPU backend:
// scale = max|x| / 127, q = round-half-even(x * (127 / max|x|)) clamped to +-127, and a group holding an
// inf or a nan gets q = 0 and a nan scale (which poisons the group's outputs, as on the CPU).
#pragma once

#include <cstdint>

namespace kiln::cuda {

// Lanes per group: about 8 values each, a power of two up to the warp.
__device__ __forceinline__ int quantize_team_lanes(int group_size) {
  int team = 1;
  while (team < 32 && team * 8 <= group_size) team *= 2;
  return team;
}

// A team of `team` lanes (aligned within the warp; every lane of the warp calls this together) quantizes
// one group: x [n] into q [n] and *scale. valid: false for a team without a group this round (it joins
// the shuffles and writes nothing).
__device__ __forceinline__ void quantize_group_team(const float* x, int8_t* q, float* scale, int n, int team,
                                                    bool valid) {
  const int lane = int(threadIdx.x) % team;
  float amax = 0.0f, poisoned = 0.0f;
#pragma unroll 8
  for (int i = lane; i < n; i += team) {
    const float v = x[i];
    amax = fmaxf(amax, fabsf(v));
    if (!isfinite(v)) poisoned = 1.0f;
  }
  for (int offset = team / 2; offset > 0; offset /= 2) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    poisoned = fmaxf(poisoned, __shfl_xor_sync(0xffffffffu, poisoned, offset));
  }
  if (!valid) return;
  if (poisoned != 0.0f) {
    for (int i = lane; i < n; i += team) q[i] = 0;
    if (lane == 0) *scale = __int_as_float(0x7fc00000);  // nan
    return;
  }
  // IEEE division and an unfused product, as the CPU computes them.
  const float inv = amax > 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
#pragma unroll 8
  for (int i = lane; i < n; i += team) {
    const float r = rintf(__fmul_rn(x[i], inv));  // ties to even
    q[i] = int8_t(int(fminf(fmaxf(r, -127.0f), 127.0f)));
  }
  if (lane == 0) *scale = __fdiv_rn(amax, 127.0f);
}

}  // namespace kiln::cuda
