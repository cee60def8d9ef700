// Causal attention of query rows from many sequences over a paged KV cache: each sequence's positions
// live in fixed-size blocks taken from one pool, listed in its row of a block table. GQA, ALiBi, local
// window, as in attention.h. Keys and values of every row are already rotated and stored.
#pragma once

#include <cstdint>

#include "kernels/cpu/cpu_level.h"
#include "kernels/cpu/thread_pool.h"

namespace kiln {

struct PagedAttentionParams {
  int64_t n_rows = 0;               // query rows in this call
  int n_heads = 1;
  int n_kv_heads = 1;               // n_heads % n_kv_heads == 0: query head h reads kv head h / (n_heads / n_kv_heads)
  int head_dim = 64;
  int64_t block_positions = 16;     // positions per block
  int64_t n_blocks = 0;             // blocks in the pool
  int64_t n_seqs = 0;               // rows of the block table
  int64_t max_blocks_per_seq = 0;   // columns of the block table
  const int32_t* block_table = nullptr;  // [n_seqs, max_blocks_per_seq]: position j of sequence s is in
                                         // block block_table[s, j / block_positions], at j % block_positions
  const int32_t* row_seq = nullptr;      // [n_rows] the sequence of each row
  const int32_t* row_position = nullptr; // [n_rows] a row sees its sequence's keys [0, position]
  float scale = 0.125f;             // usually 1/sqrt(head_dim)
  int64_t window = 0;               // > 0: a row at p sees keys in (p - window, p]
  const float* alibi_slopes = nullptr;  // [n_heads] or nullptr: score += slope[h] * (key position - p)
};

// q: [n_rows, n_heads, head_dim] · k_pool, v_pool: [n_blocks, n_kv_heads, block_positions, head_dim], the
// blocks of every position a row sees filled · out: [n_rows, n_heads, head_dim]. Threads split the
// (row, kv head, chunk of 512 keys) triples. A row's output is bit for bit the same whatever other rows
// the call holds and however many threads run it, so a sequence decodes alike alone or in a batch.
// Throws kiln::Error for bad sizes, a sequence or position out of range, or a block id outside the pool.
// level: for tests; must be one this CPU supports.
void paged_attention(const float* q, const float* k_pool, const float* v_pool, float* out,
                     const PagedAttentionParams& p, ThreadPool& pool, CpuLevel level = cpu_level_default());
// The naive reference (double precision, one query head at a time); never optimised.
void paged_attention_reference(const float* q, const float* k_pool, const float* v_pool, float* out,
                               const PagedAttentionParams& p);

}  // namespace kiln
