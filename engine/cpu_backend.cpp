#include "engine/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/alibi.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/residual.h"
#include "kernels/cpu/rotary.h"

namespace kiln {
namespace {

bool is_gated(MlpKind mlp) { return mlp == MlpKind::SiluGated || mlp == MlpKind::GeluGated; }

Activation activation_of(MlpKind mlp) {
  switch (mlp) {
    case MlpKind::SiluGated: return Activation::Silu;
    case MlpKind::GeluGated: return Activation::Gelu;
    case MlpKind::Gelu: return Activation::Gelu;
    case MlpKind::GeluTanh: return Activation::GeluTanh;
    case MlpKind::Relu: return Activation::Relu;
  }
  return Activation::Silu;
}

// x: [n_tokens, dim] += bias: [dim] (nothing when bias is nullptr)
void add_bias(float* x, const float* bias, int64_t n_tokens, int64_t dim) {
  if (bias == nullptr) return;
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t i = 0; i < dim; ++i) x[t * dim + i] += bias[i];
}

int64_t choose_n_ctx(const ModelConfig& c, const Weights& w, int64_t requested) {
  KILN_CHECK(requested >= 0, "the context size must be positive, got {}", requested);
  int64_t n_ctx = requested > 0 ? requested : std::min<int64_t>(c.n_ctx_train, 4096);
  if (c.position == PositionKind::Learned) {
    const int64_t limit = w.n_positions() - c.position_offset;
    KILN_CHECK(requested <= limit, "the model has learned positions for {} tokens; a context of {} is too long",
               limit, requested);
    n_ctx = std::min(n_ctx, limit);
  }
  return n_ctx;
}

}  // namespace

CpuBackend::CpuBackend(const ModelConfig& config, const Weights& weights, const BackendOptions& options)
    : config_(config),
      weights_(weights),
      ws_(make_workspace(config, options.max_batch)),
      cache_(make_kv_cache(config, choose_n_ctx(config, weights, options.n_ctx), options.max_kv_bytes)),
      pool_(options.n_threads),
      on_tensor_(options.on_tensor) {
  KILN_CHECK(int64_t(weights.layers.size()) == config.n_layers, "the weights hold {} layers, the config {}",
             weights.layers.size(), config.n_layers);
  if (config.position == PositionKind::Alibi) alibi_ = alibi_slopes(int(config.n_heads));
  if (config.position == PositionKind::Rotary) {
    rotary_.mode = config.rotary_style == RotaryStyle::Half ? RotaryMode::RotateHalf : RotaryMode::RotateEveryTwo;
    rotary_.rotary_dim = int(config.rotary_dim);
    rotary_.theta = config.rope_theta;
    rotary_.position_scale = config.rope_scale;
    rotary_table_ = std::make_unique<RotaryTable>(rotary_, cache_.n_ctx);
  }
}

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
  KILN_CHECK(config_.lm_head || logits == nullptr || all_logits,
             "this {} model is an encoder without an LM head: it embeds text (kiln embed) and cannot generate",
             config_.architecture);
  // A bidirectional layer needs every token of the sequence in one step.
  KILN_CHECK(config_.causal || (first_position == 0 && n_tokens <= ws_.max_tokens),
             "this {} model attends both ways: run the whole input (at most {} tokens) in one call",
             config_.architecture, ws_.max_tokens);
  for (int64_t i = 0; i < n_tokens; ++i)
    KILN_CHECK(tokens[i] >= 0 && tokens[i] < config_.n_vocab, "token {} at index {} is outside the vocabulary of {}",
               tokens[i], i, config_.n_vocab);

  n_past_ = first_position;
  for (int64_t start = 0; start < n_tokens; start += ws_.max_tokens) {
    const int64_t n = std::min(ws_.max_tokens, n_tokens - start);
    const bool last = start + n == n_tokens;
    float* out = logits == nullptr ? nullptr
                 : all_logits      ? logits + start * config_.output_width()
                 : last            ? logits
                                   : nullptr;
    forward_chunk(tokens + start, n, first_position + start, out, all_logits);
    n_past_ = first_position + start + n;
  }
}

void CpuBackend::forward_chunk(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                               bool all_logits) {
  const int64_t dim = config_.dim;
  embed(tokens, n_tokens, first_position);
  for (int64_t layer = 0; layer < config_.n_layers; ++layer) layer_forward(layer, n_tokens, first_position);
  if (logits == nullptr) return;  // prefill: the cache is filled

  // output norm + LM head (an encoder returns the hidden states)
  const int64_t rows = all_logits ? n_tokens : 1;
  const float* last = ws_.x.data() + (n_tokens - rows) * dim;
  const float* hidden = last;
  if (config_.final_norm) {
    norm(last, weights_.output_norm, weights_.output_norm_bias, ws_.xn.data(), rows);
    hidden = ws_.xn.data();
  }
  emit("result_norm", -1, hidden, rows * dim);
  if (!config_.lm_head) {
    std::copy_n(hidden, rows * dim, logits);
    return;
  }
  if (config_.projects_embedding()) {
    matmul(weights_.output_proj, hidden, ws_.embd.data(), rows, pool_);
    hidden = ws_.embd.data();
  }
  matmul(weights_.output, hidden, logits, rows, pool_);
  add_bias(logits, weights_.output_bias, rows, config_.n_vocab);
  emit("logits", -1, logits, rows * config_.n_vocab);
}

void CpuBackend::embed(const int32_t* tokens, int64_t n_tokens, int64_t first_position) {
  const int64_t dim = config_.dim;
  float* x = ws_.x.data();
  if (config_.projects_embedding()) {  // narrow rows, then the projection in
    const int64_t embd_dim = config_.embd_dim();
    for (int64_t t = 0; t < n_tokens; ++t)
      dequantize_row(weights_.token_embd, tokens[t], ws_.embd.data() + t * embd_dim);
    matmul(weights_.token_embd_proj, ws_.embd.data(), x, n_tokens, pool_);
  } else {
    for (int64_t t = 0; t < n_tokens; ++t) dequantize_row(weights_.token_embd, tokens[t], x + t * dim);
  }
  // Every token has type 0; its row is added before the position, in the order the reference adds them.
  float* type0 = ws_.attn_proj.data();  // free until the first attention
  if (config_.n_token_types > 0) dequantize_row(weights_.token_type_embd, 0, type0);
  for (int64_t t = 0; t < n_tokens; ++t) {
    float* row = x + t * dim;
    if (config_.embedding_scale != 1.0f)
      for (int64_t i = 0; i < dim; ++i) row[i] *= config_.embedding_scale;
    if (config_.n_token_types > 0)
      for (int64_t i = 0; i < dim; ++i) row[i] += type0[i];
    if (config_.position == PositionKind::Learned) {
      float* pos = ws_.xn.data();  // free until the first norm
      dequantize_row(weights_.pos_embd, first_position + t + config_.position_offset, pos);
      for (int64_t i = 0; i < dim; ++i) row[i] += pos[i];
    }
  }
  if (weights_.token_embd_norm) norm(x, weights_.token_embd_norm, weights_.token_embd_norm_bias, x, n_tokens);
  emit("token_embd", -1, x, n_tokens * dim);
}

void CpuBackend::norm(const float* x, const float* weight, const float* bias, float* y, int64_t n_tokens) const {
  const int64_t dim = config_.dim;
  if (config_.norm == NormKind::Layer) {
    layer_norm(x, weight, bias, y, n_tokens, dim, config_.norm_eps);
  } else {
    rms_norm(x, weight, y, n_tokens, dim, config_.norm_eps);
    add_bias(y, bias, n_tokens, dim);
  }
}

void CpuBackend::layer_forward(int64_t layer, int64_t n, int64_t first_position) {
  const ModelConfig& c = config_;
  const LayerWeights& w = weights_.layers[size_t(layer)];
  const int64_t dim = c.dim, q_dim = c.q_dim(), kv_dim = c.kv_dim(), qkv_dim = c.qkv_dim();
  const int64_t ffn = c.ffn_dim;
  float* x = ws_.x.data();
  float* xn = ws_.xn.data();
  float* qkv = ws_.qkv.data();
  float* q = ws_.q.data();
  float* k = ws_.k.data();
  float* att = ws_.att.data();

  // fused norm + QKV GEMM (a post-norm layer reads the residual stream as it is)
  const float* attn_in = x;
  if (!c.post_norm) {
    norm(x, w.attn_norm, w.attn_norm_bias, xn, n);
    emit("attn_norm", layer, xn, n * dim);
    attn_in = xn;
  }
  matmul(w.attn_qkv, attn_in, qkv, n, pool_);
  add_bias(qkv, w.attn_qkv_bias, n, qkv_dim);
  emit("qkv", layer, qkv, n * qkv_dim);

  // rotary + KV append
  for (int64_t t = 0; t < n; ++t) {
    std::memcpy(q + t * q_dim, qkv + t * qkv_dim, size_t(q_dim) * sizeof(float));
    std::memcpy(k + t * kv_dim, qkv + t * qkv_dim + q_dim, size_t(kv_dim) * sizeof(float));
  }
  if (c.position == PositionKind::Rotary) {
    int32_t* positions = ws_.positions.data();
    for (int64_t t = 0; t < n; ++t) positions[t] = int32_t(first_position + t);
    rotary(q, positions, n, int(c.n_heads), int(c.head_dim), rotary_, rotary_table_.get());
    rotary(k, positions, n, int(c.n_kv_heads), int(c.head_dim), rotary_, rotary_table_.get());
  }
  emit("q", layer, q, n * q_dim);
  emit("k", layer, k, n * kv_dim);
  kv_append(cache_, layer, k, kv_dim, qkv + q_dim + kv_dim, qkv_dim, n, first_position);

  // attention
  AttentionParams ap;
  ap.n_tokens = n;
  ap.first_position = first_position;
  ap.n_heads = int(c.n_heads);
  ap.n_kv_heads = int(c.n_kv_heads);
  ap.head_dim = int(c.head_dim);
  ap.kv_stride = cache_.n_ctx;
  ap.scale = c.attention_scale > 0 ? c.attention_scale : 1.0f / std::sqrt(float(c.head_dim));
  ap.causal = c.causal;
  ap.window = c.sliding_window;
  ap.alibi_slopes = alibi_.empty() ? nullptr : alibi_.data();
  attention(q, cache_.k_layer(layer), cache_.v_layer(layer), att, ap, pool_);
  emit("attn", layer, att, n * q_dim);

  // output projection + residual (deferred to the end of the layer for a parallel residual)
  float* attn_proj = ws_.attn_proj.data();
  matmul(w.attn_out, att, attn_proj, n, pool_);
  emit("attn_out", layer, attn_proj, n * dim);
  if (!c.parallel_residual) residual_add_bias(x, attn_proj, w.attn_out_bias, nullptr, nullptr, n, dim);
  if (c.post_norm) {
    norm(x, w.attn_norm, w.attn_norm_bias, x, n);
    emit("attn_norm", layer, x, n * dim);
  }

  // norm + MLP GEMM + activation (with shared_layer_norm the MLP reads the attention's normed input)
  const float* ffn_in = x;
  if (!c.post_norm) {
    if (!c.shared_layer_norm) norm(x, w.ffn_norm, w.ffn_norm_bias, xn, n);
    emit("ffn_norm", layer, xn, n * dim);
    ffn_in = xn;
  }
  float* up = ws_.up.data();
  matmul(w.ffn_up, ffn_in, up, n, pool_);
  float* hidden = up;
  if (is_gated(c.mlp)) {
    add_bias(up, w.ffn_up_bias, n, 2 * ffn);
    gated_activation(up, ws_.act.data(), n, ffn, activation_of(c.mlp));
    hidden = ws_.act.data();
  } else {
    bias_activation(up, w.ffn_up_bias, n, ffn, activation_of(c.mlp));
  }
  emit("ffn_act", layer, hidden, n * ffn);

  // down projection + residual
  float* ffn_out = ws_.ffn_out.data();
  matmul(w.ffn_down, hidden, ffn_out, n, pool_);
  if (c.parallel_residual)
    residual_add_bias(x, attn_proj, w.attn_out_bias, ffn_out, w.ffn_down_bias, n, dim);
  else
    residual_add_bias(x, ffn_out, w.ffn_down_bias, nullptr, nullptr, n, dim);
  if (c.post_norm) {
    norm(x, w.ffn_norm, w.ffn_norm_bias, x, n);
    emit("ffn_norm", layer, x, n * dim);
  }
  emit("layer_out", layer, x, n * dim);
}

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& config, const Weights& weights,
                                          const BackendOptions& options) {
  return std::make_unique<CpuBackend>(config, weights, options);
}

std::unique_ptr<Backend> make_cpu_backend(const KilnFile& file, const BackendOptions& options) {
  return std::make_unique<CpuBackend>(file.config(), bind_weights(file), options);
}

}  // namespace kiln
