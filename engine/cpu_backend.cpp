#include "engine/cpu_backend.h"

#include <algorithm>

#include "engine/error.h"
#include "engine/kiln_file.h"
#include "kernels/cpu/attention.h"

namespace kiln {
namespace {

// The single sequence's cache: the step's rows are positions [first_position, + n) of it.
class ContiguousKv final : public KvStore {
 public:
  ContiguousKv(KvCache& cache, int64_t first_position) : cache_(cache), first_position_(first_position) {}
  void store(int64_t layer, const float* k, int64_t k_stride, const float* v, int64_t v_stride, int64_t n) override {
    kv_append(cache_, layer, k, k_stride, v, v_stride, n, first_position_);
  }
  void attend(int64_t layer, const float* q, float* out, const AttentionParams& shape, ThreadPool& pool) override {
    AttentionParams p = shape;
    p.first_position = first_position_;
    p.kv_stride = cache_.n_ctx;
    attention(q, cache_.k_layer(layer), cache_.v_layer(layer), out, p, pool);
  }

 private:
  KvCache& cache_;
  int64_t first_position_;
};

}  // namespace

CpuBackend::CpuBackend(const ModelConfig& config, const Weights& weights, const BackendOptions& options)
    : cache_(make_kv_cache(config, context_size(config, weights, options.n_ctx), options.max_kv_bytes)),
      // No step holds more tokens than the context: a short context needs no larger workspace.
      forward_(config, weights, std::min(options.max_batch, cache_.n_ctx), cache_.n_ctx, options.n_threads,
               options.on_tensor, false, options.shard) {}

void CpuBackend::forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                         bool all_logits) {
  KILN_CHECK(tokens != nullptr && n_tokens >= 1, "forward needs at least one token");
  KILN_CHECK(first_position >= 0 && first_position <= n_past_,
             "forward at position {} would leave a gap: the cache holds {} positions", first_position, n_past_);
  KILN_CHECK(n_tokens <= cache_.n_ctx - first_position,
             "{} tokens at position {} do not fit the context of {} positions: start a new conversation or use a "
             "larger context size",
             n_tokens, first_position, cache_.n_ctx);
  // An encoder's output is every token's hidden state, never a next-token prediction.
  KILN_CHECK(config().lm_head || logits == nullptr || all_logits,
             "this {} model is an encoder without an LM head: it embeds text (kiln embed) and cannot generate",
             config().architecture);
  // A bidirectional layer needs every token of the sequence in one step.
  KILN_CHECK(config().causal || (first_position == 0 && n_tokens <= forward_.max_tokens()),
             "this {} model attends both ways: run the whole input (at most {} tokens) in one call",
             config().architecture, forward_.max_tokens());
  for (int64_t i = 0; i < n_tokens; ++i)
    KILN_CHECK(tokens[i] >= 0 && tokens[i] < forward_.shard().n_vocab,
               "token {} at index {} is outside the vocabulary of {}", tokens[i], i, forward_.shard().n_vocab);

  n_past_ = first_position;
  for (int64_t start = 0; start < n_tokens; start += forward_.max_tokens()) {
    const int64_t n = std::min(forward_.max_tokens(), n_tokens - start);
    const bool last = start + n == n_tokens;
    float* out = logits == nullptr ? nullptr
                 : all_logits      ? logits + start * config().output_width()
                 : last            ? logits
                                   : nullptr;
    forward_chunk(tokens + start, n, first_position + start, out, all_logits);
    n_past_ = first_position + start + n;
  }
}

void CpuBackend::forward_chunk(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                               bool all_logits) {
  int32_t* positions = forward_.workspace().positions.data();
  for (int64_t t = 0; t < n_tokens; ++t) positions[t] = int32_t(first_position + t);
  ContiguousKv kv(cache_, first_position);
  forward_.run_layers(tokens, positions, n_tokens, kv);
  if (logits == nullptr) return;  // prefill: the cache is filled

  // output norm + LM head for the last row, or every row
  const int64_t rows = all_logits ? n_tokens : 1;
  forward_.head(forward_.workspace().x.data() + (n_tokens - rows) * config().dim, rows, logits);
}

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& config, const Weights& weights,
                                          const BackendOptions& options) {
  return std::make_unique<CpuBackend>(config, weights, options);
}

std::unique_ptr<Backend> make_cpu_backend(const KilnFile& file, const BackendOptions& options) {
  return std::make_unique<CpuBackend>(file.config(), bind_weights(file), options);
}

}  // namespace kiln
