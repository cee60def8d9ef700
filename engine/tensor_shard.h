// Tensor parallelism, Megatron-style: which part of a model each rank holds, and the rank's weights.
// A rank holds whole key/value head groups (with their query heads), a slice of the MLP's hidden units
// and a slice of the vocabulary; norms, positions and the rest are replicated. The QKV and first MLP
// matmuls split by output rows, so each rank computes its own heads and hidden units; the attention
// output and second MLP matmuls split by input columns, so each rank's result is a partial sum, and the
// ranks add them up (Communicator::all_reduce_sum) before the residual add: once after attention, once
// after the MLP. The token embedding is summed the same way (a rank fills the rows of the tokens in its
// vocabulary, zeros for the others); each rank's LM head gives the logits of its vocabulary, which the
// caller gathers. Biases of the split-by-columns matmuls are added once, after the sum.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "engine/model_config.h"
#include "engine/weights.h"

namespace kiln {

// Sums rows across the ranks of one model, in place. Every rank calls it with the same n in the same
// order; every rank ends with the same bits.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual void all_reduce_sum(float* data, int64_t n) = 0;
};

// The whole model's ranges a rank holds. Default: the whole model (size 1), nothing to sum.
struct TensorShard {
  int rank = 0;
  int size = 1;
  int64_t n_heads = 0, head_begin = 0, head_end = 0;  // query heads of the whole model's n_heads
  int64_t kv_head_begin = 0, kv_head_end = 0;
  int64_t ffn_begin = 0, ffn_end = 0;                 // MLP hidden units
  int64_t n_vocab = 0, vocab_begin = 0, vocab_end = 0;  // embedding and LM head rows of the whole n_vocab
  Communicator* comm = nullptr;                       // set when size > 1

  bool whole() const { return size == 1; }
};

// The shard of size 1: every range covers the whole model.
[[nodiscard]] TensorShard whole_model(const ModelConfig& config);

// Rank `rank` of `size`: key/value groups, hidden units (in whole int8 groups of ffn_down) and vocabulary
// rows split as evenly as they divide. Throws kiln::Error saying why when the model cannot be split so
// (more ranks than key/value heads or hidden-unit groups, a head boundary inside an int8 group).
[[nodiscard]] TensorShard plan_shard(const ModelConfig& config, const Weights& weights, int rank, int size);

// The rank's own model: its heads, key/value heads, hidden units and vocabulary rows.
[[nodiscard]] ModelConfig shard_config(const ModelConfig& config, const TensorShard& shard);

// The rank's weights. Row slices are views of the whole model's (the mapped file); the QKV rows of its
// heads, its gate and up rows and the column slices are copied here, so the rank reads only its part.
struct ShardedWeights {
  Weights weights;
  std::deque<std::vector<uint8_t>> storage;  // the copies; a deque never moves them
};

[[nodiscard]] ShardedWeights shard_weights(const ModelConfig& config, const Weights& weights,
                                           const TensorShard& shard);

}  // namespace kiln
