// The one interface every backend implements, chosen once at start-up. A backend owns its weights'
// binding, workspace and KV cache; the caller owns the model file and keeps it open.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "engine/error.h"
#include "engine/model_config.h"
#include "engine/tensor_shard.h"
#include "engine/top_logits.h"

namespace kiln {

class KilnFile;
struct Weights;

// Receives each named intermediate as its stage ends, in this order: "token_embd" (layer -1); per layer
// "attn_norm", "qkv", "q" and "k" (after rotary), "attn", "attn_out" (projection, before bias and
// residual), "ffn_norm", "ffn_act", "layer_out" (the residual stream); then "result_norm" and "logits"
// (layer -1, only for the rows whose logits are asked for). data: [n_tokens, width] f32, valid during the
// call.
using TensorCallback = std::function<void(std::string_view name, int layer, const float* data, int64_t n)>;

// Per-stage timing of forward steps (kiln bench --profile). While `enabled`, the CUDA backend runs each
// step without its graph, times it with events, then calls on_stage once per stage in order: a stage is
// named by the on_tensor name that ends it and runs from the end of the stage before (the first, from the
// step's start). The CPU backend ignores it: its on_tensor calls come as each stage ends, so a host clock
// there times the stages. The caller owns it and may switch it between steps.
struct StageTimer {
  bool enabled = false;
  std::function<void(std::string_view stage, int layer, double microseconds)> on_stage;
};

struct BackendOptions {
  int64_t n_ctx = 0;        // KV cache positions; 0: the model's training context, at most 4096
  int n_threads = 0;        // <= 0: all cores
  int64_t max_batch = 512;  // tokens per forward step; longer inputs run in chunks
  uint64_t max_kv_bytes = uint64_t(32) << 30;  // refuse a larger KV cache rather than swap
  TensorCallback on_tensor;  // optional debugging hook; slows the forward when set
  std::shared_ptr<StageTimer> stage_timer;  // optional; costs nothing while disabled
  // Set for each rank by the tensor-parallel backend: the part of the whole model that the backend's
  // config and weights are (engine/tensor_shard.h). By default the whole model.
  TensorShard shard;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;  // "CPU", "CUDA": for reports
  virtual const ModelConfig& config() const = 0;
  virtual int64_t n_ctx() const = 0;
  virtual int64_t n_past() const = 0;  // positions filled in the KV cache

  // Runs tokens at positions [first_position, first_position + n_tokens), after the cache holds positions
  // [0, first_position) (first_position <= n_past(); a smaller one rewinds). tokens: [n_tokens].
  // logits: [n_tokens, n_vocab] when all_logits, else [n_vocab] for the last token; nullptr only fills the
  // KV cache (prefill). Throws kiln::Error for a token outside the vocabulary or a full context.
  virtual void forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                       bool all_logits) = 0;

  // forward for the last token's logits ([output_width] floats), into memory the backend holds: valid until
  // its next call. A GPU backend copies them straight into page-locked memory, one copy of the row fewer
  // than into the caller's. Throws kiln::Error as forward does.
  virtual const float* forward_last(const int32_t* tokens, int64_t n_tokens, int64_t first_position) {
    last_.resize(size_t(config().output_width()));
    forward(tokens, n_tokens, first_position, last_.data(), false);
    return last_.data();
  }
  // The largest k forward_top takes; 0: it is not offered.
  virtual int64_t max_top_k() const { return 0; }
  // forward for the last token's logits, cut down to its k best (1 <= k <= max_top_k()), as a sampler that
  // looks at no others needs (Sampler::top_needed): a GPU backend then copies k values, not the vocabulary.
  // The view (one row) is valid until the next call. Throws kiln::Error as forward does, and for a k
  // outside [1, max_top_k()].
  virtual TopLogits forward_top(const int32_t* /*tokens*/, int64_t /*n_tokens*/, int64_t /*first_position*/,
                                int64_t k) {
    throw Error(fmt::format("the {} backend returns whole rows of logits, not the {} best", name(), k));
  }

  // Forgets every cached position.
  virtual void reset() = 0;

 private:
  std::vector<float> last_;  // forward_last's row
};

[[nodiscard]] std::unique_ptr<Backend> make_cpu_backend(const KilnFile& file, const BackendOptions& options);
// The weights' views must outlive the backend (a test can bind them to memory it owns).
[[nodiscard]] std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& config, const Weights& weights,
                                                        const BackendOptions& options);

}  // namespace kiln
