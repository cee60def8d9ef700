#include "kernels/cuda/paged_attention.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/attention_merge.cuh"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/paged_kv.cuh"

namespace kiln::cuda {
namespace {

struct Params {
  PagedAttentionArgs a;
  int64_t q_stride;
  int heads_per_block, blocks_per_kv_head, n_splits;  // n_splits 1: no partial buffer
  int chunk;                                          // keys of a split
  float qk_scale;
};

// A row's visible keys: (position - window, position], or [0, position].
__device__ __forceinline__ int key_lo(int position, int64_t window) {
  return window > 0 ? int(max(int64_t(0), int64_t(position) - window + 1)) : 0;
}

// The Src of decode_attention_block for a paged pool: query heads [h0, h0 + n_rows) of row `row` (all of
// kv head g), and its keys in split `split` (chunk split of kChunk keys), or all of them for one split.
template <int kR>
struct PagedRow {
  const float* q;
  const int32_t* table;
  int n_rows, head_dim, h0, g, n_heads, n_kv_heads, block_positions, shift;  // shift: log2(block_positions) or -1
  bool masked = false, alibi;
  int position;
  int64_t row, begin, end;
  float slope_[kR];

  __device__ PagedRow(const Params& p, int64_t row_index, int y, int split)
      : head_dim(p.a.kv.head_dim), n_heads(p.a.n_heads), n_kv_heads(p.a.kv.n_kv_heads), row(row_index) {
    const int n_rep = n_heads / n_kv_heads;
    g = y / p.blocks_per_kv_head;
    h0 = g * n_rep + (y % p.blocks_per_kv_head) * p.heads_per_block;
    n_rows = min(p.heads_per_block, g * n_rep + n_rep - h0);
    q = p.a.q + row * p.q_stride;
    table = p.a.kv.block_table + int64_t(p.a.row_seq[row]) * p.a.kv.max_blocks_per_seq;
    block_positions = int(p.a.kv.block_positions);
    shift = (block_positions & (block_positions - 1)) == 0 ? __ffs(block_positions) - 1 : -1;
    const int at = p.a.row_position[row];
    position = at;
    alibi = p.a.alibi_slopes != nullptr;
    begin = key_lo(at, p.a.window);
    end = int64_t(at) + 1;
    if (p.n_splits > 1) {
      begin = max(begin, int64_t(split) * p.chunk);
      end = min(end, int64_t(split + 1) * p.chunk);
    }
#pragma unroll
    for (int r = 0; r < kR; ++r)
      slope_[r] = p.a.alibi_slopes != nullptr ? p.a.alibi_slopes[h0 + min(r, n_rows - 1)] * kLog2e : 0.0f;
  }
  __device__ int64_t th(int r) const { return row * n_heads + h0 + r; }
  __device__ const float* q_row(int r) const { return q + int64_t(h0 + r) * head_dim; }
  __device__ int pos(int) const { return position; }
  __device__ float slope(int r) const { return slope_[r]; }
  __device__ bool visible(int, int) const { return true; }  // [begin, end) is the row's own range
  __device__ int64_t key_offset(int64_t key) const {
    const int j = int(key);
    const int b = shift >= 0 ? j >> shift : j / block_positions, slot = j - b * block_positions;
    return ((int64_t(table[b]) * n_kv_heads + g) * block_positions + slot) * head_dim;
  }
};

// Beside one row, each thread's loads go fewer keys deep than attention.cu's, for more blocks a
// multiprocessor. f32: 4 keys, 7 blocks (7B batch decode: 256 rows of ~650 keys 30.9 -> 29.1 ms a step; 8
// blocks at 2 or 3 keys were slower). f16: 3 keys, fp8: 2, both 8 blocks, so that a 7B step's 32 rows x 32
// heads run in one wave (7 and 5 blocks left 100 and 364 blocks to a second; f16 spills at 4 keys): rows of
// 65..128 keys 19.4 -> 17.1 us a layer (f16), 18.1 -> 15.2 (fp8).
__host__ __device__ constexpr int one_row_keys(int value_bytes) {
  return value_bytes == 2 ? 3 : value_bytes == 1 ? 2 : 4;
}
__host__ __device__ constexpr int one_row_blocks(int value_bytes) { return value_bytes == 4 ? 7 : 8; }

// Block (row blockIdx.x, kv head and group of its query heads blockIdx.y, split blockIdx.z). kW: values
// per chunk (kv_chunk_values, or 1 for head dims that are not whole chunks).
template <typename T, int kW, int kDMax, int kR>
__global__ void __launch_bounds__(kDecodeThreads, kR == 1 ? one_row_blocks(sizeof(T)) : decode_min_blocks(kR))
    paged_attention_kernel(Params p) {
  constexpr int kTk = kDMax / kW < 32 ? kDMax / kW : 32, kCpt = kDMax / kW / kTk;
  pdl_launch_dependents();  // the merge may be scheduled now: it waits for this grid to finish
  // The row's sequence, position and keys: step inputs, copied in before the step's first kernel, so read
  // while the kernel before finishes.
  if (p.a.skip_rows != nullptr && p.a.skip_rows[blockIdx.x] != 0) return;
  const int split = int(blockIdx.z);
  const PagedRow<kR> src(p, blockIdx.x, int(blockIdx.y), split);
  if (src.n_rows <= 0 || src.begin >= src.end) return;  // past the row's keys: the merge reads only its splits
  // The blocks that returned above did not wait; every row attended has a split with keys (its own
  // position's), whose blocks wait, so the grid still ends after the kernel ahead.
  pdl_wait();  // the queries and the pool are written
  const DecodeOutput o{p.a.out, p.n_splits > 1 ? p.a.partial : nullptr, p.a.n_rows * p.a.n_heads, p.n_splits,
                       p.a.out16};
  decode_attention_block<T, kW, kTk, kCpt, kR, one_row_keys(sizeof(T))>(
      src, static_cast<const T*>(p.a.kv.k_pool), static_cast<const T*>(p.a.kv.v_pool), p.qk_scale, o, split);
}

// The splits of slot th: those its row's keys fall in (none for a skipped row: the merge leaves it alone).
struct RowSplits {
  const int32_t* row_position;
  const int32_t* skip_rows;
  int n_heads, chunk;
  int64_t window;
  __device__ int2 operator()(int64_t th, int) const {
    const int row = int(th) / n_heads;  // th < 2^31: a 32-bit division
    if (skip_rows != nullptr && skip_rows[row] != 0) return make_int2(0, 0);
    const int at = row_position[row];
    return make_int2(key_lo(at, window) / chunk, at / chunk + 1);
  }
};

template <typename T, int kW, int kDMax, int kR>
void launch(const Params& p, dim3 grid) {
  constexpr int kTk = kDMax / kW < 32 ? kDMax / kW : 32;
  const size_t shared = decode_shared_bytes(kDecodeThreads / kTk, kR, p.a.kv.head_dim);
  launch_pdl(paged_attention_kernel<T, kW, kDMax, kR>, grid, dim3(kDecodeThreads), shared, p.a.stream, p);
}

// kChunked: rows of head_dim values are whole chunks (kv_chunk_values of the block's rows), else one value
// at a time.
template <typename T, bool kChunked, int kDMax, int kR>
void launch_chunks(const Params& p, dim3 grid) {
  launch<T, kChunked ? kv_chunk_values<T>(kR) : 1, kDMax, kR>(p, grid);
}

template <typename T, bool kChunked, int kDMax>
void launch_rows(const Params& p, dim3 grid) {
  switch (decode_rows_template(p.heads_per_block)) {
    case 1: launch_chunks<T, kChunked, kDMax, 1>(p, grid); break;
    case 4: launch_chunks<T, kChunked, kDMax, 4>(p, grid); break;
    default: launch_chunks<T, kChunked, kDMax, kDecodeMaxRows>(p, grid); break;
  }
}

template <typename T>
void launch_dims(const Params& p, dim3 grid) {
  const int D = p.a.kv.head_dim, chunk = kv_chunk_values<T>(decode_rows_template(p.heads_per_block));
  const auto aligned = [&](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % (chunk * sizeof(T)) == 0; };
  if (D % chunk != 0 || !aligned(p.a.kv.k_pool) || !aligned(p.a.kv.v_pool)) launch_rows<T, false, 256>(p, grid);
  else if (D <= 64) launch_rows<T, true, 64>(p, grid);
  else if (D <= 128) launch_rows<T, true, 128>(p, grid);
  else launch_rows<T, true, 256>(p, grid);
}

int64_t split_count(int64_t max_keys, int64_t chunk) { return (max_keys + chunk - 1) / chunk; }

}  // namespace

size_t paged_attention_partial_floats(int64_t n_rows, int n_heads, int head_dim, int64_t max_keys,
                                      int64_t chunk_keys) {
  KILN_CHECK(chunk_keys >= 1, "cuda paged_attention: splits of {} keys", chunk_keys);
  const int64_t splits = split_count(max_keys, chunk_keys);
  if (splits <= 1) return 0;
  return size_t(splits) * size_t(n_rows) * size_t(n_heads) * size_t(head_dim + 2);
}

void paged_attention(const PagedAttentionArgs& a) {
  KILN_CHECK(a.n_rows >= 0 && a.n_rows < (int64_t(1) << 31), "cuda paged_attention: {} rows", a.n_rows);
  if (a.n_rows == 0) return;
  check_paged_layout(a.kv, "paged_attention");
  KILN_CHECK(a.n_heads >= 1 && a.n_heads % a.kv.n_kv_heads == 0 && a.n_rows * a.n_heads < (int64_t(1) << 31),
             "cuda paged_attention: {} query heads do not split into {} kv heads, or {} rows are too many",
             a.n_heads, a.kv.n_kv_heads, a.n_rows);
  KILN_CHECK(a.scale > 0 && std::isfinite(a.scale), "cuda paged_attention: scale {} must be positive", a.scale);
  KILN_CHECK(a.window >= 0, "cuda paged_attention: window {}", a.window);
  KILN_CHECK(a.q != nullptr && a.out != nullptr && a.row_seq != nullptr && a.row_position != nullptr,
             "cuda paged_attention: null input or output");
  const int64_t width = int64_t(a.n_heads) * a.kv.head_dim, q_stride = a.q_stride > 0 ? a.q_stride : width;
  KILN_CHECK(q_stride >= width, "cuda paged_attention: query rows {} floats apart hold {} heads of {}", q_stride,
             a.n_heads, a.kv.head_dim);
  const int64_t capacity = a.kv.max_blocks_per_seq * a.kv.block_positions;
  const int64_t max_keys = a.max_keys > 0 ? std::min(a.max_keys, capacity) : capacity;
  KILN_CHECK(max_keys <= (int64_t(1) << 31) - 1, "cuda paged_attention: {} keys a sequence is too many", max_keys);
  KILN_CHECK(a.chunk_keys >= 1 && a.chunk_keys < (int64_t(1) << 31), "cuda paged_attention: splits of {} keys",
             a.chunk_keys);
  const int64_t n_splits = a.partial != nullptr ? split_count(max_keys, a.chunk_keys) : 1;
  KILN_CHECK(n_splits <= 8192, "cuda paged_attention: {} keys a sequence need {} splits (at most 8192)", max_keys,
             n_splits);

  const int n_rep = a.n_heads / a.kv.n_kv_heads;
  const int blocks_per_kv_head = (n_rep + kDecodeMaxRows - 1) / kDecodeMaxRows;
  const Params p{a, q_stride, (n_rep + blocks_per_kv_head - 1) / blocks_per_kv_head, blocks_per_kv_head,
                 int(n_splits), int(a.chunk_keys), a.scale * kLog2e};
  KILN_CHECK(int64_t(a.kv.n_kv_heads) * blocks_per_kv_head <= 65535, "cuda paged_attention: {} kv heads x {} blocks",
             a.kv.n_kv_heads, blocks_per_kv_head);
  const dim3 grid(unsigned(a.n_rows), unsigned(a.kv.n_kv_heads * blocks_per_kv_head), unsigned(n_splits));
  with_kv_type(a.kv.dtype, [&](auto t) { launch_dims<decltype(t)>(p, grid); });
  if (n_splits > 1) {
    const int64_t n_th = a.n_rows * a.n_heads;
    const RowSplits range{a.row_position, a.skip_rows, a.n_heads, int(a.chunk_keys), a.window};
    launch_attention_merge(a.partial, a.out, int(n_splits), n_th, a.kv.head_dim, range, a.stream, a.out16);
  }
}

}  // namespace kiln::cuda
