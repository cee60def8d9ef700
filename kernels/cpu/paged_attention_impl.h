// The paged attention kernel as a template over an Ops struct (simd_ops.h), instantiated once per level:
// include inside the level's target region, after simd_math.h. It reuses the contiguous kernel's pieces
// (attention_impl.h): a block is laid out as a contiguous cache of block_positions positions.
#pragma once

#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/paged_attention_kernels.h"

namespace kiln::paged_attention_detail {
namespace {

// One block's share of the online softmax: scores of the block's keys [j0, j1) (block-local), then for
// each query head the running max m, sum and unnormalised output acc rescaled and extended.
template <class O>
void attend_block(const PagedAttentionJob& job, int64_t row, int g, const float* k_block, const float* v_block,
                  int64_t block_start, int64_t j0, int64_t j1, float* m, float* sum, float* acc, float* scores,
                  float* values) {
  const PagedAttentionParams& p = job.p;
  const int hd = p.head_dim;
  attention_detail::AttentionJob view;  // this block as a contiguous cache of block_positions positions
  view.q = job.q + row * p.n_heads * hd;
  view.k_cache = k_block;
  view.n_rep = job.n_rep;
  view.p.n_heads = p.n_heads;
  view.p.head_dim = hd;
  view.p.kv_stride = p.block_positions;
  view.p.first_position = p.row_position[row] - block_start;
  view.p.scale = p.scale;
  view.p.alibi_slopes = p.alibi_slopes;
  attention_detail::head_scores<O>(view, 0, g, j0, j1, scores);
  const int64_t n = j1 - j0;
  const float* v = v_block + (int64_t(g) * p.block_positions + j0) * hd;
  for (int r = 0; r < job.n_rep; ++r) {
    float* e = scores + r * n;
    float* a = acc + r * hd;
    const float block_max = attention_detail::row_max<O>(e, n);
    if (block_max > m[r]) {
      const float rescale = std::exp(m[r] - block_max);  // 0 for the first block (m = -inf)
      sum[r] *= rescale;
      for (int i = 0; i < hd; ++i) a[i] *= rescale;
      m[r] = block_max;
    }
    sum[r] += attention_detail::exp_in_place<O>(e, n, m[r]);
    attention_detail::weighted_values<O>(e, v, n, hd, values);
    for (int i = 0; i < hd; ++i) a[i] += values[i];
  }
}

template <class O>
void paged_items_impl(const PagedAttentionJob& job, int64_t begin, int64_t end, float* scratch) {
  const PagedAttentionParams& p = job.p;
  const int hd = p.head_dim;
  const int n_rep = job.n_rep;
  const int64_t bs = p.block_positions;
  const int64_t block_floats = int64_t(p.n_kv_heads) * bs * hd;
  float* acc = scratch;                              // [n_rep, hd]
  float* scores = acc + int64_t(n_rep) * hd;         // [n_rep, bs]
  float* m = scores + int64_t(n_rep) * bs;           // [n_rep]
  float* sum = m + n_rep;                            // [n_rep]
  float* values = sum + n_rep;                       // [hd]
  // The row of item `begin`, then advanced as items pass.
  int64_t row = 0;
  while (job.item_begin[row + 1] <= begin) ++row;
  for (int64_t item = begin; item < end; ++item) {
    while (job.item_begin[row + 1] <= item) ++row;
    const int64_t n_chunks = job.chunk_begin[row + 1] - job.chunk_begin[row];
    const int64_t local = item - job.item_begin[row];
    const int g = int(local / n_chunks);
    const int64_t chunk = local % n_chunks;
    const int32_t* table = p.block_table + int64_t(p.row_seq[row]) * p.max_blocks_per_seq;
    int64_t lo, hi;
    visible_keys(p, p.row_position[row], lo, hi);
    const int64_t b_begin = lo / bs + chunk * job.chunk_blocks;
    const int64_t b_last = (hi - 1) / bs + 1;
    const int64_t b_end = b_last < b_begin + job.chunk_blocks ? b_last : b_begin + job.chunk_blocks;

    for (int r = 0; r < n_rep; ++r) {
      m[r] = -INFINITY;
      sum[r] = 0.0f;
    }
    for (int64_t i = 0; i < int64_t(n_rep) * hd; ++i) acc[i] = 0.0f;
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t start = b * bs;
      const int64_t j0 = lo > start ? lo - start : 0;
      const int64_t j1 = hi < start + bs ? hi - start : bs;
      const int64_t offset = int64_t(table[b]) * block_floats;
      attend_block<O>(job, row, g, job.k_pool + offset, job.v_pool + offset, start, j0, j1, m, sum, acc, scores,
                      values);
    }
    for (int r = 0; r < n_rep; ++r) {
      const int64_t h = int64_t(g) * n_rep + r;
      if (n_chunks == 1) {
        float* o = job.out + (row * p.n_heads + h) * hd;
        const float inv = 1.0f / sum[r];
        for (int i = 0; i < hd; ++i) o[i] = acc[r * hd + i] * inv;
      } else {
        float* part = partial_at(job, row, chunk, h);
        part[0] = m[r];
        part[1] = sum[r];
        for (int i = 0; i < hd; ++i) part[2 + i] = acc[r * hd + i];
      }
    }
  }
}

}  // namespace
}  // namespace kiln::paged_attention_detail
