// The batch's KV memory: one pool of fixed-size blocks of positions, shared by every sequence slot. A
// sequence first reserves blocks for the positions it may reach, takes them from its reservation as it
// grows, and returns them all when released, so a running sequence never finds the pool empty. The
// accounting (KvBlockTable) is apart from the memory, so a device backend can keep the blocks itself.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/model_config.h"

namespace kiln {

// The accounting, apart from the memory (host or device): which blocks each sequence holds and reserves.
class KvBlockTable {
 public:
  // Throws kiln::Error when a size is out of range.
  KvBlockTable(int64_t n_blocks, int64_t n_ctx, int64_t max_sequences, int64_t block_positions);

  int64_t n_ctx() const { return n_ctx_; }
  int64_t max_sequences() const { return max_sequences_; }
  int64_t block_positions() const { return block_positions_; }
  int64_t n_blocks() const { return n_blocks_; }
  int64_t max_blocks_per_seq() const { return max_blocks_per_seq_; }
  int64_t free_blocks() const { return n_blocks_ - n_reserved_; }  // neither used nor reserved

  int64_t length(int32_t seq) const;              // positions the sequence holds
  int64_t reserved_positions(int32_t seq) const;  // the most positions reserved for it
  // Reserves blocks for n_positions positions of seq (counting what it holds). Returns false, changing
  // nothing, when too few blocks are free; never shrinks a reservation. Throws kiln::Error for a slot
  // out of range or more positions than n_ctx.
  bool reserve(int32_t seq, int64_t n_positions);
  // Takes blocks from the reservation so that seq holds new_length positions (>= its length). Throws
  // kiln::Error past the reservation.
  void grow(int32_t seq, int64_t new_length);
  // Returns the sequence's blocks and reservation to the pool; it then holds nothing.
  void release(int32_t seq);

  const int32_t* block_table() const { return table_.data(); }  // [max_sequences, max_blocks_per_seq], -1: none
  // The block holding position `position` of seq; throws kiln::Error outside what the sequence holds.
  int32_t block_of(int32_t seq, int64_t position) const;

 private:
  void check_seq(int32_t seq) const;
  int64_t blocks_for(int64_t n_positions) const { return (n_positions + block_positions_ - 1) / block_positions_; }

  int64_t n_ctx_, max_sequences_, block_positions_, max_blocks_per_seq_;
  int64_t n_blocks_;
  int64_t n_reserved_ = 0;          // blocks reserved, those in use included
  std::vector<int32_t> table_;
  std::vector<int32_t> free_;       // a stack: the block released last is used first
  std::vector<int64_t> length_;     // [max_sequences]
  std::vector<int64_t> reserved_;   // [max_sequences] positions (its blocks: rounded up)
  std::vector<int64_t> n_used_;     // [max_sequences] blocks in the table
};

// Blocks of block_positions positions (all layers, keys and values, f32) that max_bytes holds for the
// model, at most 2^31 - 1. Throws kiln::Error when it holds none.
int64_t kv_blocks_in(const ModelConfig& config, int64_t block_positions, uint64_t max_bytes);

// The CPU's paged cache: the accounting and the blocks in host memory.
class PagedKvCache : public KvBlockTable {
 public:
  PagedKvCache(const ModelConfig& config, int64_t n_ctx, int64_t max_sequences, int64_t block_positions,
               uint64_t max_bytes);

  // Position `position` of seq (already grown to cover it) of one layer: k, v: [n_kv_heads, head_dim].
  void store(int64_t layer, int32_t seq, int64_t position, const float* k, const float* v);
  // One layer of the pool: [n_blocks, n_kv_heads, block_positions, head_dim].
  float* k_layer(int64_t layer) { return k_.get() + layer * layer_floats(); }
  float* v_layer(int64_t layer) { return v_.get() + layer * layer_floats(); }

 private:
  int64_t layer_floats() const { return n_blocks() * block_floats_; }

  int64_t n_layers_, n_kv_heads_, head_dim_;
  int64_t block_floats_;            // one layer of one block: n_kv_heads * block_positions * head_dim
  std::unique_ptr<float[]> k_, v_;  // [n_layers, n_blocks, n_kv_heads, block_positions, head_dim]; pages are
                                    // touched only as blocks are used
};

}  // namespace kiln
