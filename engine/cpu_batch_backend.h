// The batched CPU backend: the shared CPU forward (cpu_forward.h) over rows of many sequences, with a
// paged KV cache. Every matmul reads each weight once for all rows of a step. The forward is
// batch-invariant: a row's logits are bit for bit the same whatever else the step holds, so a sequence's
// tokens are the same alone or in a batch.
#pragma once

#include "engine/batch_backend.h"
#include "engine/batch_step.h"
#include "engine/cpu_forward.h"
#include "engine/paged_kv_cache.h"

namespace kiln {

class CpuBatchBackend final : public BatchBackend {
 public:
  static constexpr int64_t kBlockPositions = 16;

  CpuBatchBackend(const ModelConfig& config, const Weights& weights, const BatchBackendOptions& options);

  std::string_view name() const override { return "CPU"; }
  const ModelConfig& config() const override { return forward_.config(); }
  int64_t n_ctx() const override { return cache_.n_ctx(); }
  int64_t max_sequences() const override { return cache_.max_sequences(); }
  int64_t max_step_tokens() const override { return forward_.max_tokens(); }
  int64_t block_positions() const override { return cache_.block_positions(); }
  int64_t free_blocks() const override { return cache_.free_blocks(); }
  bool reserve(int32_t seq, int64_t n_positions) override { return cache_.reserve(seq, n_positions); }
  void forward(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows, int64_t n_logit_rows,
               float* logits) override;
  void release(int32_t seq) override { cache_.release(seq); }

 private:
  PagedKvCache cache_;
  CpuForward forward_;
  BatchStep step_;  // the step's rows, checked
};

}  // namespace kiln
