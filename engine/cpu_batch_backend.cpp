#include "engine/cpu_batch_backend.h"

#include <cstring>

#include "engine/error.h"
#include "engine/kiln_file.h"
#include "kernels/cpu/paged_attention.h"

namespace kiln {
namespace {

// The paged cache as the forward's KV store: row r is position row_position[r] of sequence row_seq[r].
class PagedKv final : public KvStore {
 public:
  PagedKv(PagedKvCache& cache, const int32_t* row_seq, const int32_t* row_position)
      : cache_(cache), row_seq_(row_seq), row_position_(row_position) {}
  void store(int64_t layer, const float* k, int64_t k_stride, const float* v, int64_t v_stride, int64_t n) override {
    for (int64_t r = 0; r < n; ++r)
      cache_.store(layer, row_seq_[r], row_position_[r], k + r * k_stride, v + r * v_stride);
  }
  void attend(int64_t layer, const float* q, float* out, const AttentionParams& shape, ThreadPool& pool) override {
    PagedAttentionParams p;
    p.n_rows = shape.n_tokens;
    p.n_heads = shape.n_heads;
    p.n_kv_heads = shape.n_kv_heads;
    p.head_dim = shape.head_dim;
    p.block_positions = cache_.block_positions();
    p.n_blocks = cache_.n_blocks();
    p.n_seqs = cache_.max_sequences();
    p.max_blocks_per_seq = cache_.max_blocks_per_seq();
    p.block_table = cache_.block_table();
    p.row_seq = row_seq_;
    p.row_position = row_position_;
    p.scale = shape.scale;
    p.window = shape.window;
    p.alibi_slopes = shape.alibi_slopes;
    paged_attention(q, cache_.k_layer(layer), cache_.v_layer(layer), out, p, pool);
  }

 private:
  PagedKvCache& cache_;
  const int32_t* row_seq_;
  const int32_t* row_position_;
};

const ModelConfig& checked_for_batch(const ModelConfig& config) {
  KILN_CHECK(config.causal && config.lm_head,
             "this {} model is an encoder: it embeds text (kiln embed) and cannot generate in a batch",
             config.architecture);
  return config;
}

}  // namespace

CpuBatchBackend::CpuBatchBackend(const ModelConfig& config, const Weights& weights,
                                 const BatchBackendOptions& options)
    : cache_(checked_for_batch(config), context_size(config, weights, options.n_ctx), options.max_sequences,
             kBlockPositions, options.kv_bytes),
      forward_(config, weights, options.max_step_tokens, cache_.n_ctx(), options.n_threads, {}, true),
      step_(options.max_sequences, options.max_step_tokens) {}

void CpuBatchBackend::forward(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows,
                              int64_t n_logit_rows, float* logits) {
  step_.check(cache_, config().n_vocab, tokens, n_tokens, logit_rows, n_logit_rows, logits);
  step_.grow(cache_, n_tokens);

  PagedKv kv(cache_, step_.row_seq(), step_.row_position());
  forward_.run_layers(step_.tokens(), step_.row_position(), n_tokens, kv);
  if (n_logit_rows == 0) return;

  // output norm + LM head for the asked rows, gathered first
  const int64_t dim = config().dim;
  Workspace& ws = forward_.workspace();
  for (int64_t i = 0; i < n_logit_rows; ++i)
    std::memcpy(ws.ffn_out.data() + i * dim, ws.x.data() + logit_rows[i] * dim, size_t(dim) * sizeof(float));
  forward_.head(ws.ffn_out.data(), n_logit_rows, logits);
}

std::unique_ptr<BatchBackend> make_cpu_batch_backend(const ModelConfig& config, const Weights& weights,
                                                     const BatchBackendOptions& options) {
  return std::make_unique<CpuBatchBackend>(config, weights, options);
}

std::unique_ptr<BatchBackend> make_cpu_batch_backend(const KilnFile& file, const BatchBackendOptions& options) {
  return std::make_unique<CpuBatchBackend>(file.config(), bind_weights(file), options);
}

}  // namespace kiln
