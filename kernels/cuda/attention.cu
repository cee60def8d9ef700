#include "kernels/cuda/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine/error.h"
#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/attention_merge.cuh"
#include "kernels/cuda/attention_tiled.h"
#include "kernels/cuda/cuda_util.h"

namespace kiln::cuda {
namespace {

static_assert(kDecodeThreads == kMergeThreads, "the decode kernel's blocks run the fused merge");
constexpr int64_t kTiledMinKeysPerSplit = 256;
constexpr int64_t kDecodeMinKeysPerSplit = 64;

using DecodeParams = AttentionKernelParams;

// The Src of decode_attention_block for a contiguous cache: rows [row0, row0 + n_rows) of kv head g (row =
// token * group + query head within the group), and the split's share of the keys those rows can see.
// Splits used: every split of the launch, or with the fused merge (p.counters) only as many as the visible
// keys fill, kDecodeMinKeysPerSplit each: a short context then takes one pass and no merge at all.
template <int kR>
struct ContiguousRows {
  const float* q;
  int n_rows, head_dim, n_heads, group, g, n_used;
  bool causal;
  bool masked, alibi;
  int64_t window, row0, begin, end, key_base;
  int pos_[kR];  // positions fit 31 bits: first_position is an int32 and the cache holds them
  float slope_[kR];

  __device__ ContiguousRows(const DecodeParams& p, int64_t first_row, int kv_head, int split, int align)
      : q(p.q),
        head_dim(p.head_dim),
        n_heads(p.n_heads),
        group(p.n_heads / p.n_kv_heads),
        g(kv_head),
        causal(p.causal),
        masked(p.n_tokens > 1),  // one token: [begin, end) is exactly what its rows see
        alibi(p.alibi_slopes != nullptr),
        window(p.window),
        row0(first_row) {
    const int64_t n_all = p.n_tokens * group, first = *p.first_position, n_keys = first + p.n_tokens;
    n_rows = int(min(int64_t(kDecodeMaxRows), n_all - row0));
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      const int64_t row = row0 + min(r, n_rows - 1);
      pos_[r] = int(first + row / group);
      slope_[r] = p.alibi_slopes != nullptr ? p.alibi_slopes[g * group + row % group] * kLog2e : 0.0f;
    }
    const int64_t p_lo = first + row0 / group, p_hi = first + (row0 + n_rows - 1) / group;
    int64_t lo = 0, hi = n_keys;
    if (causal) hi = p_hi + 1;
    if (window > 0) {
      lo = max(int64_t(0), p_lo - window + 1);
      if (!causal) hi = min(hi, p_hi + window);
    }
    n_used = p.n_splits;
    if (p.counters != nullptr)
      n_used = int(min(int64_t(p.n_splits), max(int64_t(1), (hi - lo + kDecodeMinKeysPerSplit - 1) / kDecodeMinKeysPerSplit)));
    // The visible span shared evenly among the splits used, in whole steps of the kernel.
    const int64_t chunk = ((hi - lo + n_used - 1) / n_used + align - 1) / align * align;
    begin = lo + split * chunk;
    end = min(hi, begin + chunk);
    key_base = int64_t(g) * p.kv_stride * head_dim;
  }
  __device__ int64_t th(int r) const { return (row0 + r) / group * n_heads + g * group + (row0 + r) % group; }
  __device__ const float* q_row(int r) const { return q + th(r) * head_dim; }
  __device__ int pos(int r) const { return pos_[r]; }
  __device__ float slope(int r) const { return slope_[r]; }
  __device__ bool visible(int key, int r) const {
    const int64_t at = pos_[r];
    return (!causal || key <= at) && (window <= 0 || (key > at - window && (causal || key < at + window)));
  }
  __device__ int64_t key_offset(int64_t key) const { return key_base + key * head_dim; }
};

// Block (row tile blockIdx.x of kDecodeMaxRows rows, kv head blockIdx.y, split blockIdx.z). The registers
// of f16's blocks a multiprocessor for every cache type, as attention_splits counts them.
template <typename T, int kDMax, int kR>
__global__ void __launch_bounds__(kDecodeThreads, decode_min_blocks(kR))
    attention_decode_kernel(DecodeParams p) {
  constexpr int kW = kv_chunk_values<T>(kR), kTk = kDMax / kW < 32 ? kDMax / kW : 32, kCpt = kDMax / kW / kTk;
  using Shape = DecodeShape<T, kW, kTk, kCpt, kR>;
  pdl_wait();  // the query and the cache are written
  pdl_launch_dependents();  // the next kernel may be scheduled now: it waits for this grid to finish
  const int split = int(blockIdx.z);
  const ContiguousRows<kR> src(p, int64_t(blockIdx.x) * kDecodeMaxRows, int(blockIdx.y), split, Shape::kKeysPerStep);
  if (split >= src.n_used) return;  // neither written nor counted
  const DecodeOutput o{p.out, src.n_used > 1 ? p.partial : nullptr, p.n_tokens * p.n_heads, p.n_splits};
  if (src.begin >= src.end && o.partial != nullptr)
    decode_mark_empty(src, o, split);
  else
    decode_attention_block<T, kW, kTk, kCpt, kR>(src, static_cast<const T*>(p.k_cache),
                                                 static_cast<const T*>(p.v_cache), p.scale * kLog2e, o, split);
  if (o.partial != nullptr && p.counters != nullptr) {
    extern __shared__ float merge_smem[];
    merge_splits_if_last(o.partial, o.out, o.n_splits, src.n_used, o.n_th, p.head_dim,
                         p.counters + int64_t(blockIdx.y) * gridDim.x + blockIdx.x, src, merge_smem);
  }
}

template <typename T, int kDMax, int kR>
void launch_decode(const DecodeParams& p, dim3 grid, cudaStream_t stream) {
  constexpr int kW = kv_chunk_values<T>(kR), kTk = kDMax / kW < 32 ? kDMax / kW : 32;
  size_t shared = decode_shared_bytes(kDecodeThreads / kTk, kR, p.head_dim);
  if (p.n_splits > 1 && p.counters != nullptr) shared = std::max(shared, merge_shared_bytes(p.n_splits));
  launch_pdl(attention_decode_kernel<T, kDMax, kR>, grid, dim3(kDecodeThreads), shared, stream, p);
}

template <typename T, int kDMax>
void launch_decode_rows(const DecodeParams& p, int rows, dim3 grid, cudaStream_t stream) {
  switch (decode_rows_template(rows)) {
    case 1: launch_decode<T, kDMax, 1>(p, grid, stream); break;
    case 4: launch_decode<T, kDMax, 4>(p, grid, stream); break;
    default: launch_decode<T, kDMax, kDecodeMaxRows>(p, grid, stream); break;
  }
}

template <typename T>
void launch_decode_dims(const DecodeParams& p, int rows, dim3 grid, cudaStream_t stream) {
  if (p.head_dim <= 64) launch_decode_rows<T, 64>(p, rows, grid, stream);
  else if (p.head_dim <= 128) launch_decode_rows<T, 128>(p, rows, grid, stream);
  else launch_decode_rows<T, 256>(p, rows, grid, stream);
}

// The decode kernel reads whole 16-byte chunks: rows of head_dim values must be whole chunks, aligned.
bool decode_fits(const AttentionArgs& a) {
  const int64_t rows = a.n_tokens * (a.n_heads / a.n_kv_heads);
  const size_t row_bytes = size_t(a.head_dim) * kv_dtype_bytes(a.kv_dtype);
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  return rows <= kAttentionDecodeMaxRows && row_bytes % 16 == 0 && aligned(a.k_cache) && aligned(a.v_cache);
}

void attention_decode(const AttentionArgs& a) {
  const DecodeParams p = kernel_params(a);
  const int64_t rows = a.n_tokens * (a.n_heads / a.n_kv_heads);
  const dim3 grid(unsigned((rows + kDecodeMaxRows - 1) / kDecodeMaxRows), unsigned(a.n_kv_heads), unsigned(a.n_splits));
  const int rows_per_block = int(std::min<int64_t>(rows, kDecodeMaxRows));
  with_kv_type(a.kv_dtype, [&](auto t) { launch_decode_dims<decltype(t)>(p, rows_per_block, grid, a.stream); });
}

struct AllSplits {
  __device__ int2 operator()(int64_t, int n_splits) const { return make_int2(0, n_splits); }
};

}  // namespace

int attention_splits(int64_t n_tokens, int n_heads, int n_kv_heads, int head_dim, int64_t max_keys,
                     int n_multiprocessors) {
  KILN_CHECK(n_tokens >= 1 && n_heads >= 1 && n_kv_heads >= 1 && n_heads % n_kv_heads == 0 && head_dim >= 1,
             "attention_splits: bad shape: {} tokens, {} heads, {} kv heads, head_dim {}", n_tokens, n_heads,
             n_kv_heads, head_dim);
  const int64_t rows = n_tokens * (n_heads / n_kv_heads);
  int64_t splits = 1;
  if (rows <= kAttentionDecodeMaxRows) {
    const int64_t blocks = (rows + kDecodeMaxRows - 1) / kDecodeMaxRows * n_kv_heads;
    // f16's count for every cache type (fp8 would allow a fifth block of one row): a graph's splits stay put.
    const int per_sm = decode_min_blocks(decode_rows_template(int(std::min<int64_t>(rows, kDecodeMaxRows))));
    splits = std::min(int64_t(per_sm) * n_multiprocessors / blocks,
                      (max_keys + kDecodeMinKeysPerSplit - 1) / kDecodeMinKeysPerSplit);
  } else {
    const int tile = attention_tiled_rows(head_dim);
    const int64_t blocks = (rows + tile - 1) / tile * n_kv_heads;
    splits = std::min((2 * int64_t(n_multiprocessors) + blocks - 1) / blocks,
                      (max_keys + kTiledMinKeysPerSplit - 1) / kTiledMinKeysPerSplit);
  }
  return int(std::clamp<int64_t>(splits, 1, kAttentionMaxSplits));
}

size_t attention_counter_ints(int n_kv_heads) {
  return size_t((kAttentionDecodeMaxRows + kDecodeMaxRows - 1) / kDecodeMaxRows) * size_t(n_kv_heads);
}

size_t attention_partial_floats(int n_splits, int64_t n_tokens, int n_heads, int head_dim) {
  if (n_splits <= 1) return 0;
  return size_t(n_splits) * size_t(n_tokens) * size_t(n_heads) * size_t(head_dim + 2);
}

void attention(const AttentionArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.n_heads >= 1 && a.n_kv_heads >= 1 && a.n_heads % a.n_kv_heads == 0,
             "cuda attention: {} query heads do not split into {} kv heads", a.n_heads, a.n_kv_heads);
  KILN_CHECK(a.head_dim >= 1 && a.head_dim <= kAttentionMaxHeadDim, "cuda attention: head_dim {} is outside [1, {}]",
             a.head_dim, kAttentionMaxHeadDim);
  KILN_CHECK(a.n_splits >= 1 && a.n_splits <= kAttentionMaxSplits, "cuda attention: {} splits (at most {})",
             a.n_splits, kAttentionMaxSplits);
  KILN_CHECK(a.n_kv_heads <= 65535 && a.n_tokens * a.n_heads < (int64_t(1) << 31),
             "cuda attention: {} tokens x {} heads is too large", a.n_tokens, a.n_heads);
  KILN_CHECK(a.scale > 0 && std::isfinite(a.scale), "cuda attention: scale {} must be positive", a.scale);
  KILN_CHECK(a.kv_dtype == KvDType::F32 || a.kv_dtype == KvDType::F16 || a.kv_dtype == KvDType::F8,
             "cuda attention: unknown KV dtype {}", int(a.kv_dtype));
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.q != nullptr && a.k_cache != nullptr && a.v_cache != nullptr && a.out != nullptr &&
                 a.first_position != nullptr && a.kv_stride >= a.n_tokens,
             "cuda attention: null input, output or position, or a cache of {} positions for {} tokens", a.kv_stride,
             a.n_tokens);
  KILN_CHECK(a.n_splits == 1 || a.partial != nullptr, "cuda attention: {} splits need a partial buffer", a.n_splits);
  const bool decode = decode_fits(a);
  if (decode) attention_decode(a);
  else attention_tiled(a);
  if (a.n_splits > 1 && !(decode && a.split_counters != nullptr)) {
    const int64_t n_th = a.n_tokens * a.n_heads;
    launch_attention_merge(a.partial, a.out, a.n_splits, n_th, a.head_dim, AllSplits{}, a.stream);
  }
}

}  // namespace kiln::cuda
