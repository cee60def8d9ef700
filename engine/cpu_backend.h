// The CPU backend for one sequence: the shared CPU forward (cpu_forward.h) over a contiguous KV cache.
#pragma once

#include "engine/backend.h"
#include "engine/cpu_forward.h"
#include "engine/kv_cache.h"

namespace kiln {

class CpuBackend final : public Backend {
 public:
  CpuBackend(const ModelConfig& config, const Weights& weights, const BackendOptions& options);

  const ModelConfig& config() const override { return forward_.config(); }
  int64_t n_ctx() const override { return cache_.n_ctx; }
  std::string_view name() const override { return "CPU"; }
  int64_t n_past() const override { return n_past_; }
  void forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
               bool all_logits) override;
  void reset() override { n_past_ = 0; }

 private:
  void forward_chunk(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                     bool all_logits);

  KvCache cache_;
  CpuForward forward_;
  int64_t n_past_ = 0;
};

}  // namespace kiln
