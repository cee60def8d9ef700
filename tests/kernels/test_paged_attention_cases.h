// Test cases shared by the CPU and CUDA paged attention tests: sequences of random keys and values in
// shuffled blocks of a pool whose other blocks hold nan (a read outside a row's blocks poisons the
// output), and rows mixing a prompt chunk of one sequence with decode rows of others.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/paged_attention.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln::test {

struct PagedCase {
  int n_heads, n_kv_heads, head_dim;
  int64_t block_positions;
  std::vector<int64_t> seq_lengths;  // positions each sequence holds after the step
  std::vector<int64_t> new_rows;     // rows of each sequence in the step (its last positions)
  int64_t window;
  bool alibi;
};

struct PagedData {
  PagedAttentionParams p;
  std::vector<float> q, k_pool, v_pool, slopes;
  std::vector<int32_t> table, row_seq, row_position;
  std::vector<std::vector<float>> k_seq, v_seq;  // per sequence: [n_kv_heads, length, head_dim]
};

inline PagedData make_paged(const PagedCase& c, uint32_t seed) {
  PagedData d;
  const int hd = c.head_dim;
  const int64_t bs = c.block_positions;
  const auto n_seqs = int64_t(c.seq_lengths.size());
  int64_t max_blocks = 1, used = 0;
  for (int64_t len : c.seq_lengths) {
    max_blocks = std::max(max_blocks, (len + bs - 1) / bs);
    used += (len + bs - 1) / bs;
  }
  const int64_t n_blocks = used + 3;  // three spare blocks of nan
  std::vector<int32_t> order(static_cast<size_t>(n_blocks));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(seed));
  d.table.assign(size_t(n_seqs * max_blocks), -1);
  const int64_t block_floats = int64_t(c.n_kv_heads) * bs * hd;
  d.k_pool.assign(size_t(n_blocks * block_floats), NAN);
  d.v_pool.assign(d.k_pool.size(), NAN);
  size_t next = 0;
  for (int64_t s = 0; s < n_seqs; ++s) {
    const int64_t len = c.seq_lengths[size_t(s)];
    d.k_seq.push_back(random_floats(size_t(c.n_kv_heads * len * hd), seed + uint32_t(2 * s + 1), -1.5f, 1.5f));
    d.v_seq.push_back(random_floats(size_t(c.n_kv_heads * len * hd), seed + uint32_t(2 * s + 2), -2.0f, 2.0f));
    for (int64_t b = 0; b < (len + bs - 1) / bs; ++b) d.table[size_t(s * max_blocks + b)] = order[next++];
    for (int g = 0; g < c.n_kv_heads; ++g)
      for (int64_t j = 0; j < len; ++j)
        for (int i = 0; i < hd; ++i) {
          const int64_t block = d.table[size_t(s * max_blocks + j / bs)];
          const auto dst = size_t(((block * c.n_kv_heads + g) * bs + j % bs) * hd + i);
          const auto src = size_t((g * len + j) * hd + i);
          d.k_pool[dst] = d.k_seq.back()[src];
          d.v_pool[dst] = d.v_seq.back()[src];
        }
    for (int64_t j = len - c.new_rows[size_t(s)]; j < len; ++j) {
      d.row_seq.push_back(int32_t(s));
      d.row_position.push_back(int32_t(j));
    }
  }
  d.p.n_rows = int64_t(d.row_seq.size());
  d.p.n_heads = c.n_heads;
  d.p.n_kv_heads = c.n_kv_heads;
  d.p.head_dim = hd;
  d.p.block_positions = bs;
  d.p.n_blocks = n_blocks;
  d.p.n_seqs = n_seqs;
  d.p.max_blocks_per_seq = max_blocks;
  d.p.block_table = d.table.data();
  d.p.row_seq = d.row_seq.data();
  d.p.row_position = d.row_position.data();
  d.p.scale = 1.0f / std::sqrt(float(hd));
  d.p.window = c.window;
  if (c.alibi) {
    for (int h = 0; h < c.n_heads; ++h) d.slopes.push_back(std::pow(2.0f, -8.0f * float(h + 1) / float(c.n_heads)));
    d.p.alibi_slopes = d.slopes.data();
  }
  d.q = random_floats(size_t(d.p.n_rows * c.n_heads * hd), seed + 100, -1.5f, 1.5f);
  return d;
}

inline const std::vector<PagedCase>& paged_cases() {
  static const std::vector<PagedCase> all = {
      {1, 1, 64, 16, {1}, {1}, 0, false},
      // a prefill chunk of one sequence mixed with decode rows of others
      {9, 3, 64, 16, {13, 41, 1, 16}, {8, 1, 1, 1}, 0, false},
      {8, 1, 80, 32, {70, 5, 33}, {1, 5, 1}, 0, true},
      {24, 3, 128, 3, {10, 22, 7}, {4, 1, 7}, 0, false},
      {6, 6, 7, 1, {9, 4}, {2, 1}, 0, true},
      {4, 2, 80, 16, {60, 35, 17}, {3, 1, 1}, 20, false},
      {9, 3, 64, 32, {100, 64, 33}, {1, 1, 33}, 7, true},
      {2, 1, 33, 5, {26, 3}, {26, 1}, 0, false},
      // one long sequence alone: its blocks are split over threads
      {9, 3, 64, 16, {1500}, {1}, 0, false},
      {8, 1, 128, 32, {1200, 900}, {1, 1}, 300, true},
  };
  return all;
}

inline double paged_tolerance(int head_dim) {
  const double max_v = 2.0, s = 1.5 * 1.5 * std::sqrt(double(head_dim));
  return (8.0 * (head_dim + 4) * kU * s + 1e-6) * max_v;
}

}  // namespace kiln::test
