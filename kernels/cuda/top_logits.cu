#include "kernels/cuda/top_logits.h"

#include <climits>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kAll = 0xffffffffu;

// An unsigned key in the order of the floats: positives with the sign bit set, negatives with every bit
// flipped. -0 is keyed as +0, so that the two tie, as they compare.
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t u = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (u & 0x80000000u) != 0 ? ~u : u | 0x80000000u;
}

// The sum of value over the threads before this one. Every thread of the block calls it.
__device__ uint64_t exclusive_sum(uint64_t value, uint64_t* warp_totals) {
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  uint64_t inclusive = value;
  for (int d = 1; d < 32; d *= 2) {
    const uint64_t up = __shfl_up_sync(kAll, inclusive, d);
    if (lane >= d) inclusive += up;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    uint64_t total = warp_totals[lane];  // kWarps == 32
    for (int d = 1; d < 32; d *= 2) {
      const uint64_t up = __shfl_up_sync(kAll, total, d);
      if (lane >= d) total += up;
    }
    warp_totals[lane] = total;
  }
  __syncthreads();
  return inclusive - value + (warp > 0 ? warp_totals[warp - 1] : 0);
}

// One block a row. A radix select finds the key T of the k-th best logit eight bits a pass, from the top:
// a pass counts the keys that share the digits found so far by their next digit, and keeps the digit in
// which the k-th best falls. Lanes of a warp with the same digit add once (__match_any_sync): logits have
// few distinct exponents, so most lanes share one. Then every key above T is taken, and of the keys equal
// to T the first in id order, as many as k leaves: a thread takes a contiguous run of ids, placed by the
// counts of the threads before it.
__global__ __launch_bounds__(kThreads) void top_logits_kernel(const float* __restrict__ logits, int64_t n_vocab,
                                                              int64_t k, float* __restrict__ top_logits,
                                                              int32_t* __restrict__ top_ids,
                                                              int32_t* __restrict__ first_invalid) {
  __shared__ uint32_t counts[256];
  __shared__ uint32_t chosen_prefix, chosen_remaining;
  __shared__ int32_t invalid;
  __shared__ uint64_t warp_totals[kWarps];
  const float* row = logits + int64_t(blockIdx.x) * n_vocab;
  const int lane = int(threadIdx.x) % 32;
  if (threadIdx.x == 0) invalid = INT_MAX;
  uint32_t prefix = 0, mask = 0, remaining = uint32_t(k);  // remaining: the rank of the k-th best among prefix's
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = int(threadIdx.x); i < 256; i += kThreads) counts[i] = 0;
    __syncthreads();
    for (int64_t base = 0; base < n_vocab; base += kThreads) {  // whole warps every round, for the match
      const int64_t i = base + threadIdx.x;
      bool counted = false;
      uint32_t digit = 0;
      if (i < n_vocab) {
        const float x = row[i];
        if (shift == 24 && !(x < INFINITY)) atomicMin(&invalid, int32_t(i));
        const uint32_t key = order_key(x);
        counted = (key & mask) == prefix;
        digit = (key >> shift) & 255u;
      }
      const uint32_t peers = __match_any_sync(kAll, counted ? digit : 256u + uint32_t(lane));
      if (counted && lane == __ffs(peers) - 1) atomicAdd(&counts[digit], uint32_t(__popc(peers)));
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // lane l looks at digits 255 - 8l down to 248 - 8l
      uint32_t sum = 0;
      for (int j = 0; j < 8; ++j) sum += counts[255 - 8 * lane - j];
      uint32_t through = sum;  // keys of this lane's digits or larger ones
      for (int d = 1; d < 32; d *= 2) {
        const uint32_t up = __shfl_up_sync(kAll, through, d);
        if (lane >= d) through += up;
      }
      uint32_t before = through - sum;
      if (before < remaining && remaining <= through)
        for (int j = 0; j < 8; ++j) {
          const uint32_t digit = uint32_t(255 - 8 * lane - j);
          if (remaining - before <= counts[digit]) {
            chosen_prefix = prefix | digit << shift;
            chosen_remaining = remaining - before;
            break;
          }
          before += counts[digit];
        }
    }
    __syncthreads();
    prefix = chosen_prefix;
    remaining = chosen_remaining;
    mask |= 255u << shift;
  }

  const int64_t per_thread = (n_vocab + kThreads - 1) / kThreads;
  const int64_t begin = int64_t(threadIdx.x) * per_thread, end = min(n_vocab, begin + per_thread);
  uint32_t n_above = 0, n_equal = 0;
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t key = order_key(row[i]);
    n_above += key > prefix ? 1 : 0;
    n_equal += key == prefix ? 1 : 0;
  }
  const uint64_t before = exclusive_sum(uint64_t(n_above) << 32 | n_equal, warp_totals);
  uint32_t at_above = uint32_t(before >> 32), at_equal = uint32_t(before);
  const uint32_t first_equal = uint32_t(k) - remaining;  // the keys above T fill the places before it
  float* out_logits = top_logits + int64_t(blockIdx.x) * k;
  int32_t* out_ids = top_ids + int64_t(blockIdx.x) * k;
  for (int64_t i = begin; i < end; ++i) {
    const float x = row[i];
    const uint32_t key = order_key(x);
    uint32_t at = UINT_MAX;
    if (key > prefix) {
      at = at_above++;
    } else if (key == prefix) {
      if (at_equal < remaining) at = first_equal + at_equal;
      ++at_equal;
    }
    if (at != UINT_MAX) {
      out_logits[at] = x;
      out_ids[at] = int32_t(i);
    }
  }
  if (threadIdx.x == 0) first_invalid[blockIdx.x] = invalid == INT_MAX ? -1 : invalid;
}

}  // namespace

void top_logits(const TopLogitsArgs& a) {
  KILN_CHECK(a.n_rows >= 0 && a.n_rows < (int64_t(1) << 31), "cuda top logits: {} rows", a.n_rows);
  KILN_CHECK(a.n_vocab >= 1 && a.n_vocab <= (int64_t(1) << 24), "cuda top logits: a vocabulary of {}", a.n_vocab);
  KILN_CHECK(a.k >= 1 && a.k <= a.n_vocab, "cuda top logits: the {} best of {}", a.k, a.n_vocab);
  if (a.n_rows == 0) return;
  KILN_CHECK(a.logits && a.top_logits && a.top_ids && a.first_invalid, "cuda top logits: a null array");
  top_logits_kernel<<<unsigned(a.n_rows), kThreads, 0, a.stream>>>(a.logits, a.n_vocab, a.k, a.top_logits,
                                                                    a.top_ids, a.first_invalid);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::cuda
