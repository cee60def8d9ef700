#include "kernels/cpu/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/simd_ops.h"
#include "kernels/cpu/simd_math.h"
#include "kernels/cpu/paged_attention_impl.h"

namespace kiln {
namespace {

using paged_attention_detail::PagedAttentionJob;

constexpr int kMaxRep = 64;            // query heads per kv head, as attention.cpp allows
constexpr int64_t kChunkKeys = 512;    // keys per work item: fewer cost more in merging than they balance

void check_params(const float* q, const float* k_pool, const float* v_pool, const float* out,
                  const PagedAttentionParams& p) {
  KILN_CHECK(p.n_rows >= 0, "paged attention: n_rows is {}", p.n_rows);
  KILN_CHECK(p.n_heads > 0 && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0 &&
                 p.n_heads / p.n_kv_heads <= kMaxRep,
             "paged attention: {} query heads cannot share {} kv heads (a whole multiple, at most {} per kv head)",
             p.n_heads, p.n_kv_heads, kMaxRep);
  KILN_CHECK(p.head_dim > 0 && p.block_positions > 0, "paged attention: head_dim {} and block_positions {} must be > 0",
             p.head_dim, p.block_positions);
  KILN_CHECK(p.window >= 0, "paged attention: window is {}", p.window);
  KILN_CHECK(std::isfinite(p.scale), "paged attention: scale is {}", p.scale);
  if (p.n_rows == 0) return;
  KILN_CHECK(q && k_pool && v_pool && out && p.block_table && p.row_seq && p.row_position,
             "paged attention: null input or output");
  for (int64_t r = 0; r < p.n_rows; ++r) {
    const int64_t seq = p.row_seq[r], position = p.row_position[r];
    KILN_CHECK(seq >= 0 && seq < p.n_seqs, "paged attention: row {} is of sequence {}, outside [0, {})", r, seq,
               p.n_seqs);
    KILN_CHECK(position >= 0 && position / p.block_positions < p.max_blocks_per_seq,
               "paged attention: row {} at position {} is past the {} blocks of {} positions a sequence holds", r,
               position, p.max_blocks_per_seq, p.block_positions);
    int64_t lo, hi;
    paged_attention_detail::visible_keys(p, position, lo, hi);
    for (int64_t b = lo / p.block_positions; b <= (hi - 1) / p.block_positions; ++b) {
      const int32_t block = p.block_table[seq * p.max_blocks_per_seq + b];
      KILN_CHECK(block >= 0 && block < p.n_blocks,
                 "paged attention: block {} of sequence {} is {}, outside the pool of {}", b, seq, block, p.n_blocks);
    }
  }
}

// out[r, h] of rows with several chunks from their partial softmaxes, in chunk order: rescale each to
// the largest max, then normalise.
void merge_chunks(const PagedAttentionJob& job) {
  const int hd = job.p.head_dim;
  for (int64_t r = 0; r < job.p.n_rows; ++r) {
    const int64_t n_chunks = job.chunk_begin[r + 1] - job.chunk_begin[r];
    if (n_chunks == 1) continue;
    for (int64_t h = 0; h < job.p.n_heads; ++h) {
      float m = -INFINITY;
      for (int64_t c = 0; c < n_chunks; ++c) m = std::max(m, partial_at(job, r, c, h)[0]);
      float* o = job.out + (r * job.p.n_heads + h) * hd;
      std::fill(o, o + hd, 0.0f);
      float total = 0;
      for (int64_t c = 0; c < n_chunks; ++c) {
        const float* part = partial_at(job, r, c, h);
        const float w = std::exp(part[0] - m);
        total += w * part[1];
        for (int i = 0; i < hd; ++i) o[i] += w * part[2 + i];
      }
      for (int i = 0; i < hd; ++i) o[i] /= total;
    }
  }
}

paged_attention_detail::PagedItemsFn items_for(CpuLevel level) {
  switch (level) {
    case CpuLevel::Avx512:
    case CpuLevel::Amx: return paged_attention_detail::paged_items_avx512;
    case CpuLevel::Avx2: return paged_attention_detail::paged_items_avx2;
    case CpuLevel::Scalar: break;
  }
  return paged_attention_detail::paged_items_impl<OpsScalar>;
}

}  // namespace

void paged_attention(const float* q, const float* k_pool, const float* v_pool, float* out,
                     const PagedAttentionParams& p, ThreadPool& pool, CpuLevel level) {
  check_params(q, k_pool, v_pool, out, p);
  KILN_CHECK(level <= cpu_level_supported(), "paged attention: CPU level {} asked for, but this CPU runs at most {}",
             cpu_level_name(level), cpu_level_name(cpu_level_supported()));
  if (p.n_rows == 0) return;
  PagedAttentionJob job;
  job.q = q;
  job.k_pool = k_pool;
  job.v_pool = v_pool;
  job.out = out;
  job.p = p;
  job.n_rep = p.n_heads / p.n_kv_heads;

  // Item and chunk offsets per row, then the partial results, in the shared scratch.
  job.chunk_blocks = std::max<int64_t>(1, kChunkKeys / p.block_positions);
  const auto n_offsets = size_t(p.n_rows + 1);
  int64_t n_chunks = 0;
  for (int64_t r = 0; r < p.n_rows; ++r) n_chunks += paged_attention_detail::row_chunks(p, job.chunk_blocks, r);
  const size_t partial_floats = size_t(n_chunks * p.n_heads * (2 + p.head_dim));
  auto* shared = static_cast<int64_t*>(
      pool.shared_scratch(2 * n_offsets * sizeof(int64_t) + partial_floats * sizeof(float)));
  int64_t* item_begin = shared;
  int64_t* chunk_begin = shared + n_offsets;
  item_begin[0] = chunk_begin[0] = 0;
  for (int64_t r = 0; r < p.n_rows; ++r) {
    const int64_t chunks = paged_attention_detail::row_chunks(p, job.chunk_blocks, r);
    chunk_begin[r + 1] = chunk_begin[r] + chunks;
    item_begin[r + 1] = item_begin[r] + chunks * p.n_kv_heads;
  }
  job.item_begin = item_begin;
  job.chunk_begin = chunk_begin;
  job.partial = reinterpret_cast<float*>(shared + 2 * n_offsets);

  const size_t scratch_bytes = size_t(paged_attention_detail::scratch_floats(job)) * sizeof(float);
  const paged_attention_detail::PagedItemsFn run = items_for(level);
  pool.parallel_for_thread(item_begin[p.n_rows], [&](int64_t begin, int64_t end, int thread) {
    run(job, begin, end, static_cast<float*>(pool.scratch(thread, scratch_bytes)));
  });
  if (n_chunks > p.n_rows) merge_chunks(job);
}

void paged_attention_reference(const float* q, const float* k_pool, const float* v_pool, float* out,
                               const PagedAttentionParams& p) {
  check_params(q, k_pool, v_pool, out, p);
  const int hd = p.head_dim;
  const int64_t bs = p.block_positions;
  for (int64_t r = 0; r < p.n_rows; ++r) {
    const int64_t position = p.row_position[r];
    const int32_t* table = p.block_table + int64_t(p.row_seq[r]) * p.max_blocks_per_seq;
    // Key j of kv head g of this row's sequence.
    auto at = [&](const float* pool_data, int g, int64_t j) {
      return pool_data + ((int64_t(table[j / bs]) * p.n_kv_heads + g) * bs + j % bs) * hd;
    };
    std::vector<double> scores(size_t(position + 1));
    for (int h = 0; h < p.n_heads; ++h) {
      const int g = h / (p.n_heads / p.n_kv_heads);
      const float* qh = q + (r * p.n_heads + h) * hd;
      double max_score = -INFINITY;
      for (int64_t j = 0; j <= position; ++j) {
        if (p.window > 0 && j <= position - p.window) {
          scores[size_t(j)] = -INFINITY;
          continue;
        }
        const float* k = at(k_pool, g, j);
        double s = 0;
        for (int i = 0; i < hd; ++i) s += double(qh[i]) * double(k[i]);
        s *= p.scale;
        if (p.alibi_slopes != nullptr) s += double(p.alibi_slopes[h]) * double(j - position);
        scores[size_t(j)] = s;
        max_score = std::max(max_score, s);
      }
      double total = 0;
      for (double& s : scores) total += (s = std::exp(s - max_score));  // exp(-inf) = 0 for masked keys
      for (int i = 0; i < hd; ++i) {
        double o = 0;
        for (int64_t j = 0; j <= position; ++j)
          if (scores[size_t(j)] > 0) o += scores[size_t(j)] * double(at(v_pool, g, j)[i]);
        out[(r * p.n_heads + h) * hd + i] = float(o / total);
      }
    }
  }
}

}  // namespace kiln
