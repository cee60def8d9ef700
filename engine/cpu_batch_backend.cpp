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
      tokens_(size_t(options.max_step_tokens)),
      row_seq_(size_t(options.max_step_tokens)),
      row_position_(size_t(options.max_step_tokens)),
      seen_in_step_(size_t(options.max_sequences), -1) {}

void CpuBatchBackend::check_step(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows,
                                 int64_t n_logit_rows, const float* logits) {
  KILN_CHECK(tokens != nullptr && n_tokens >= 1 && n_tokens <= max_step_tokens(),
             "a batch step takes 1 to {} tokens, not {}", max_step_tokens(), n_tokens);
  KILN_CHECK(n_logit_rows >= 0 && n_logit_rows <= n_tokens && (n_logit_rows == 0 || (logit_rows && logits)),
             "a batch step of {} tokens cannot return logits for {} rows", n_tokens, n_logit_rows);
  ++step_;
  for (int64_t r = 0; r < n_tokens; ++r) {
    const BatchToken& t = tokens[r];
    KILN_CHECK(t.seq >= 0 && t.seq < max_sequences(), "row {} is of sequence {}, outside the slots [0, {})", r, t.seq,
               max_sequences());
    KILN_CHECK(t.token >= 0 && t.token < config().n_vocab, "token {} at row {} is outside the vocabulary of {}",
               t.token, r, config().n_vocab);
    if (seen_in_step_[size_t(t.seq)] != step_) {
      KILN_CHECK(t.position == cache_.length(t.seq),
                 "row {} puts sequence {} at position {}, but it holds {} positions: its next row must follow them",
                 r, t.seq, t.position, cache_.length(t.seq));
      seen_in_step_[size_t(t.seq)] = step_;
    } else {
      KILN_CHECK(row_seq_[size_t(r - 1)] == t.seq,
                 "the rows of sequence {} are not consecutive (row {}): give each sequence's rows together", t.seq, r);
      KILN_CHECK(t.position == row_position_[size_t(r - 1)] + 1,
                 "row {} puts sequence {} at position {} after position {}: its rows must be in position order", r,
                 t.seq, t.position, row_position_[size_t(r - 1)]);
    }
    KILN_CHECK(t.position < cache_.reserved_positions(t.seq),
               "row {} puts sequence {} at position {}, past the {} positions reserved for it: reserve first", r,
               t.seq, t.position, cache_.reserved_positions(t.seq));
    tokens_[size_t(r)] = t.token;
    row_seq_[size_t(r)] = t.seq;
    row_position_[size_t(r)] = t.position;
  }
  for (int64_t i = 0; i < n_logit_rows; ++i)
    KILN_CHECK(logit_rows[i] >= 0 && logit_rows[i] < n_tokens, "logit row {} is outside the step's {} rows",
               logit_rows[i], n_tokens);
}

void CpuBatchBackend::forward(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows,
                              int64_t n_logit_rows, float* logits) {
  check_step(tokens, n_tokens, logit_rows, n_logit_rows, logits);
  for (int64_t r = 0; r < n_tokens; ++r)
    if (r + 1 == n_tokens || row_seq_[size_t(r + 1)] != row_seq_[size_t(r)])
      cache_.grow(row_seq_[size_t(r)], row_position_[size_t(r)] + 1);

  PagedKv kv(cache_, row_seq_.data(), row_position_.data());
  forward_.run_layers(tokens_.data(), row_position_.data(), n_tokens, kv);
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
