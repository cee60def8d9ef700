#include "engine/paged_kv_cache.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "engine/error.h"

namespace kiln {

KvBlockTable::KvBlockTable(int64_t n_blocks, int64_t n_ctx, int64_t max_sequences, int64_t block_positions)
    : n_ctx_(n_ctx), max_sequences_(max_sequences), block_positions_(block_positions), n_blocks_(n_blocks) {
  KILN_CHECK(n_ctx > 0 && n_ctx <= (int64_t(1) << 24), "the context size {} is outside [1, 2^24]", n_ctx);
  KILN_CHECK(max_sequences > 0 && max_sequences <= (int64_t(1) << 20),
             "the number of sequences {} is outside [1, 2^20]", max_sequences);
  KILN_CHECK(block_positions > 0 && block_positions <= 4096, "positions per KV block {} are outside [1, 4096]",
             block_positions);
  KILN_CHECK(n_blocks > 0 && n_blocks <= std::numeric_limits<int32_t>::max(), "{} KV blocks are out of range",
             n_blocks);
  max_blocks_per_seq_ = blocks_for(n_ctx);
  KILN_CHECK(max_sequences * max_blocks_per_seq_ <= (int64_t(1) << 26),
             "a block table of {} sequences x {} blocks is too large: use fewer sequences or larger blocks",
             max_sequences, max_blocks_per_seq_);
  table_.assign(size_t(max_sequences * max_blocks_per_seq_), -1);
  free_.resize(size_t(n_blocks_));
  for (int64_t i = 0; i < n_blocks_; ++i) free_[size_t(i)] = int32_t(n_blocks_ - 1 - i);  // block 0 on top
  length_.assign(size_t(max_sequences), 0);
  reserved_.assign(size_t(max_sequences), 0);
  n_used_.assign(size_t(max_sequences), 0);
}

void KvBlockTable::check_seq(int32_t seq) const {
  KILN_CHECK(seq >= 0 && seq < max_sequences_, "sequence {} is outside the slots [0, {})", seq, max_sequences_);
}

int64_t KvBlockTable::length(int32_t seq) const {
  check_seq(seq);
  return length_[size_t(seq)];
}

int64_t KvBlockTable::reserved_positions(int32_t seq) const {
  check_seq(seq);
  return reserved_[size_t(seq)];
}

bool KvBlockTable::reserve(int32_t seq, int64_t n_positions) {
  check_seq(seq);
  KILN_CHECK(n_positions >= 0 && n_positions <= n_ctx_,
             "sequence {} cannot reserve {} positions: a sequence holds at most {}", seq, n_positions, n_ctx_);
  int64_t& reserved = reserved_[size_t(seq)];
  if (n_positions <= reserved) return true;
  const int64_t extra = blocks_for(n_positions) - blocks_for(reserved);
  if (extra > free_blocks()) return false;
  n_reserved_ += extra;
  reserved = n_positions;
  return true;
}

void KvBlockTable::grow(int32_t seq, int64_t new_length) {
  check_seq(seq);
  const auto s = size_t(seq);
  KILN_CHECK(new_length >= length_[s] && new_length <= reserved_positions(seq),
             "sequence {} cannot grow from {} to {} positions: {} are reserved", seq, length_[s], new_length,
             reserved_positions(seq));
  const int64_t need = blocks_for(new_length);
  int32_t* table = table_.data() + seq * max_blocks_per_seq_;
  // The free stack holds at least the unused reservations of every sequence.
  for (; n_used_[s] < need; ++n_used_[s]) {
    table[n_used_[s]] = free_.back();
    free_.pop_back();
  }
  length_[s] = new_length;
}

void KvBlockTable::release(int32_t seq) {
  check_seq(seq);
  const auto s = size_t(seq);
  int32_t* table = table_.data() + seq * max_blocks_per_seq_;
  for (int64_t b = n_used_[s] - 1; b >= 0; --b) {
    free_.push_back(table[b]);
    table[b] = -1;
  }
  n_reserved_ -= blocks_for(reserved_[s]);
  reserved_[s] = 0;
  n_used_[s] = 0;
  length_[s] = 0;
}

int32_t KvBlockTable::block_of(int32_t seq, int64_t position) const {
  KILN_CHECK(seq >= 0 && seq < max_sequences_ && position >= 0 && position < length_[size_t(seq)],
             "position {} of sequence {} is outside what the sequence holds", position, seq);
  return table_[size_t(seq * max_blocks_per_seq_ + position / block_positions_)];
}

int64_t kv_blocks_in(const ModelConfig& config, int64_t block_positions, uint64_t max_bytes) {
  KILN_CHECK(block_positions > 0 && block_positions <= 4096, "positions per KV block {} are outside [1, 4096]",
             block_positions);
  // Every factor is bounded by ModelConfig::validate() and the check above, so this cannot overflow.
  const uint64_t block_bytes =
      2 * uint64_t(config.n_layers * config.n_kv_heads * block_positions * config.head_dim) * sizeof(float);
  const uint64_t n_blocks = std::min<uint64_t>(max_bytes / block_bytes, std::numeric_limits<int32_t>::max());
  KILN_CHECK(n_blocks >= 1, "{} bytes of KV memory hold no block of {} positions ({} bytes): allow more KV memory",
             max_bytes, block_positions, block_bytes);
  return int64_t(n_blocks);
}

PagedKvCache::PagedKvCache(const ModelConfig& config, int64_t n_ctx, int64_t max_sequences, int64_t block_positions,
                           uint64_t max_bytes)
    : KvBlockTable(kv_blocks_in(config, block_positions, max_bytes), n_ctx, max_sequences, block_positions),
      n_layers_(config.n_layers),
      n_kv_heads_(config.n_kv_heads),
      head_dim_(config.head_dim),
      block_floats_(n_kv_heads_ * block_positions * head_dim_) {
  const auto floats = size_t(n_layers_ * layer_floats());
  k_.reset(new float[floats]);  // uninitialised: attention reads only positions that were stored
  v_.reset(new float[floats]);
}

void PagedKvCache::store(int64_t layer, int32_t seq, int64_t position, const float* k, const float* v) {
  KILN_CHECK(layer >= 0 && layer < n_layers_, "KV store in layer {} of {}", layer, n_layers_);
  const int64_t offset = layer * layer_floats() + block_of(seq, position) * block_floats_ +
                         position % block_positions() * head_dim_;
  for (int64_t h = 0; h < n_kv_heads_; ++h) {
    const int64_t dst = offset + h * block_positions() * head_dim_;
    std::memcpy(k_.get() + dst, k + h * head_dim_, size_t(head_dim_) * sizeof(float));
    std::memcpy(v_.get() + dst, v + h * head_dim_, size_t(head_dim_) * sizeof(float));
  }
}

}  // namespace kiln
