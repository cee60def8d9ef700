// What paged_attention.cpp hands each SIMD level. Internal to kernels/cpu.
#pragma once

#include <cstdint>

#include "kernels/cpu/paged_attention.h"

namespace kiln::paged_attention_detail {

// A row's visible blocks are cut into chunks of chunk_blocks blocks, the same whatever else is in the
// call, so a row's output never depends on the other rows or the thread count. Work items are (row, kv
// head, chunk) triples, flattened in that order: row r's items start at item_begin[r].
struct PagedAttentionJob {
  const float* q = nullptr;       // [n_rows, n_heads, head_dim]
  const float* k_pool = nullptr;  // [n_blocks, n_kv_heads, block_positions, head_dim]
  const float* v_pool = nullptr;  // [n_blocks, n_kv_heads, block_positions, head_dim]
  float* out = nullptr;           // [n_rows, n_heads, head_dim], written directly for rows of one chunk
  PagedAttentionParams p;
  int n_rep = 1;                  // query heads per kv head
  int64_t chunk_blocks = 1;
  const int64_t* item_begin = nullptr;   // [n_rows + 1]
  const int64_t* chunk_begin = nullptr;  // [n_rows + 1] the row's first chunk among all rows' chunks
  float* partial = nullptr;       // [chunk_begin[n_rows], n_heads, 2 + head_dim]: see partial_at()
};

// The number of chunks of row r (at least 1).
inline int64_t row_chunks(const PagedAttentionParams& p, int64_t chunk_blocks, int64_t r) {
  const int64_t position = p.row_position[r];
  const int64_t first = p.window > 0 && position - p.window + 1 > 0 ? (position - p.window + 1) / p.block_positions : 0;
  const int64_t n_blocks = position / p.block_positions + 1 - first;
  return (n_blocks + chunk_blocks - 1) / chunk_blocks;
}

// Chunk c of row r's partial result for query head h: (max score, sum of exp(score - max), unnormalised
// output [head_dim]).
inline float* partial_at(const PagedAttentionJob& job, int64_t r, int64_t c, int64_t h) {
  return job.partial + ((job.chunk_begin[r] + c) * job.p.n_heads + h) * (2 + job.p.head_dim);
}

// The keys [begin, end) the row at `position` sees.
inline void visible_keys(const PagedAttentionParams& p, int64_t position, int64_t& begin, int64_t& end) {
  end = position + 1;
  begin = p.window > 0 && position - p.window + 1 > 0 ? position - p.window + 1 : 0;
}

// Floats of scratch one thread needs: per query head the running output and the scores of one block,
// plus one block's weighted values.
inline int64_t scratch_floats(const PagedAttentionJob& job) {
  return int64_t(job.n_rep) * (job.p.head_dim + job.p.block_positions + 2) + job.p.head_dim;
}

// Runs items [begin, end); scratch: scratch_floats() floats.
using PagedItemsFn = void (*)(const PagedAttentionJob& job, int64_t begin, int64_t end, float* scratch);
void paged_items_avx2(const PagedAttentionJob& job, int64_t begin, int64_t end, float* scratch);
void paged_items_avx512(const PagedAttentionJob& job, int64_t begin, int64_t end, float* scratch);

}  // namespace kiln::paged_attention_detail
