// The CPU backend: one top-to-bottom layer forward for every family, reading ModelConfig fields.
#pragma once

#include <memory>
#include <vector>

#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/weights.h"
#include "engine/workspace.h"
#include "kernels/cpu/rotary.h"
#include "kernels/cpu/thread_pool.h"

namespace kiln {

class CpuBackend final : public Backend {
 public:
  CpuBackend(const ModelConfig& config, const Weights& weights, const BackendOptions& options);

  const ModelConfig& config() const override { return config_; }
  int64_t n_ctx() const override { return cache_.n_ctx; }
  std::string_view name() const override { return "CPU"; }
  int64_t n_past() const override { return n_past_; }
  void forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
               bool all_logits) override;
  void reset() override { n_past_ = 0; }

 private:
  void forward_chunk(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                     bool all_logits);
  void embed(const int32_t* tokens, int64_t n_tokens, int64_t first_position);
  void layer_forward(int64_t layer, int64_t n_tokens, int64_t first_position);
  void norm(const float* x, const float* weight, const float* bias, float* y, int64_t n_tokens) const;
  void emit(const char* name, int64_t layer, const float* data, int64_t n) const {
    if (on_tensor_) on_tensor_(name, int(layer), data, n);
  }

  ModelConfig config_;
  Weights weights_;
  Workspace ws_;
  KvCache cache_;
  ThreadPool pool_;
  std::vector<float> alibi_;  // [n_heads] ALiBi slopes, empty for other position kinds
  RotaryParams rotary_;
  std::unique_ptr<RotaryTable> rotary_table_;  // cos and sin for every cached position; rotary models only
  TensorCallback on_tensor_;
  int64_t n_past_ = 0;
};

}  // namespace kiln
