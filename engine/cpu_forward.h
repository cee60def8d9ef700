// The CPU model forward, shared by the single-sequence backend and the batched one: embeddings, the one
// top-to-bottom layer function for every family (reading ModelConfig fields), and the output head. Each
// row carries its own position; where keys and values live (one contiguous cache or a paged pool) is
// the caller's KvStore.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/backend.h"
#include "engine/tensor_shard.h"
#include "engine/weights.h"
#include "engine/workspace.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu_level.h"
#include "kernels/cpu/rotary.h"
#include "kernels/cpu/thread_pool.h"

namespace kiln {

// The attention stage's memory of earlier positions.
class KvStore {
 public:
  virtual ~KvStore() = default;
  // Keeps the n rows' keys and values of one layer: k: [n, kv_dim] with rows k_stride floats apart, v
  // likewise with v_stride.
  virtual void store(int64_t layer, const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                     int64_t n) = 0;
  // out: [n, q_dim] = attention of q: [n, q_dim] over what each row's sequence holds. shape: the model's
  // heads, scale, mask, window and ALiBi slopes, with n_tokens = n.
  virtual void attend(int64_t layer, const float* q, float* out, const AttentionParams& shape,
                      ThreadPool& pool) = 0;
};

class CpuForward {
 public:
  // max_tokens: rows per call; n_ctx: positions a sequence may reach (the rotary table's size).
  // batch_invariant: every row's result is bit for bit the same whatever the other rows of the call (small
  // calls run their matmuls over padding rows, so they take the kernels of large ones, and never AMX);
  // else a single row takes the faster GEMV kernels. shard: the part of the whole model that config and
  // weights describe, under tensor parallelism (engine/tensor_shard.h); by default the whole model.
  CpuForward(const ModelConfig& config, const Weights& weights, int64_t max_tokens, int64_t n_ctx, int n_threads,
             TensorCallback on_tensor, bool batch_invariant = false, const TensorShard& shard = {});

  const ModelConfig& config() const { return config_; }
  const TensorShard& shard() const { return shard_; }
  int64_t max_tokens() const { return max_tokens_; }
  Workspace& workspace() { return ws_; }

  // The residual stream ws.x: [n, dim] after every layer. tokens, positions: [n] (checked by the caller).
  void run_layers(const int32_t* tokens, const int32_t* positions, int64_t n, KvStore& kv);
  // Output norm and LM head (an encoder returns the normed hidden states): hidden: [n_rows, dim] (may be
  // ws.ffn_out, not ws.xn or ws.embd) · out: [n_rows, output_width].
  void head(const float* hidden, int64_t n_rows, float* out);

 private:
  void embed(const int32_t* tokens, const int32_t* positions, int64_t n);
  // out: [n, width] = the token embedding rows of tokens: [n] (this shard's rows, summed over the ranks).
  void embedding_rows(const int32_t* tokens, int64_t n, float* out, int64_t width);
  // Adds up the ranks' partial rows of a matmul split by columns; nothing for the whole model.
  void sum_over_ranks(float* data, int64_t n) {
    if (shard_.comm) shard_.comm->all_reduce_sum(data, n);
  }
  void layer_forward(int64_t layer, const int32_t* positions, int64_t n, KvStore& kv);
  void norm(const float* x, const float* weight, const float* bias, float* y, int64_t n) const;
  CpuLevel level_for(const TensorView& w) const;
  // y: [n, rows of w] = x: [n, cols of w] · wᵀ, over padding rows of x and y too when batch-invariant.
  void matmul_rows(const TensorView& w, const float* x, float* y, int64_t n);
  void emit(const char* name, int64_t layer, const float* data, int64_t n) const {
    if (on_tensor_) on_tensor_(name, int(layer), data, n);
  }

  ModelConfig config_;
  TensorShard shard_;
  Weights weights_;
  int64_t max_tokens_;
  bool batch_invariant_;
  CpuLevel level_;                     // of the matmuls (level_for: what a weight's matmul may use)
  Workspace ws_;                       // rows for max_tokens, or the padding minimum if larger
  std::vector<float> padded_logits_;  // batch-invariant: [padding minimum, output_width]
  ThreadPool pool_;
  AttentionParams attention_shape_;
  std::vector<float> alibi_;  // [the whole model's n_heads] ALiBi slopes, empty for other position kinds
  RotaryParams rotary_;
  std::unique_ptr<RotaryTable> rotary_table_;  // cos and sin for positions [0, n_ctx); rotary models only
  TensorCallback on_tensor_;
};

}  // namespace kiln
