#include "engine/cpu_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/alibi.h"
#include "engine/error.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/residual.h"

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

// Batch invariance: from these row counts up, the matmul kernels up to AVX-512 compute a row the same
// way whatever the row count. Below them a row takes the GEMV kernels, with another summation order,
// and int8 activation rounding can amplify that last-bit difference into other tokens. AMX is left out
// for f16 and bf16 weights (it would take their rows from 16 on only, with other sums); its int8 kernel
// gives the AVX-512 GEMM's bits, so int8 weights keep it.
constexpr int64_t kInvariantRowsInt8 = 4;
constexpr int64_t kInvariantRows = 12;

// x: [n_tokens, dim] += bias: [dim] (nothing when bias is nullptr)
void add_bias(float* x, const float* bias, int64_t n_tokens, int64_t dim) {
  if (bias == nullptr) return;
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t i = 0; i < dim; ++i) x[t * dim + i] += bias[i];
}

}  // namespace

CpuForward::CpuForward(const ModelConfig& config, const Weights& weights, int64_t max_tokens, int64_t n_ctx,
                       int n_threads, TensorCallback on_tensor, bool batch_invariant, const TensorShard& shard)
    : config_(config),
      shard_(shard.whole() ? whole_model(config) : shard),
      weights_(weights),
      max_tokens_(max_tokens),
      batch_invariant_(batch_invariant),
      level_(cpu_level_default()),
      ws_(make_workspace(config, batch_invariant ? std::max(max_tokens, kInvariantRows) : max_tokens)),
      pool_(n_threads),
      on_tensor_(std::move(on_tensor)) {
  KILN_CHECK(max_tokens >= 1, "the batch size {} is outside [1, 65536]", max_tokens);
  if (batch_invariant) padded_logits_.resize(size_t(kInvariantRows * config.output_width()));
  KILN_CHECK(int64_t(weights.layers.size()) == config.n_layers, "the weights hold {} layers, the config {}",
             weights.layers.size(), config.n_layers);
  if (config.position == PositionKind::Alibi) alibi_ = alibi_slopes(int(shard_.n_heads));
  if (config.position == PositionKind::Rotary) {
    rotary_.mode = config.rotary_style == RotaryStyle::Half ? RotaryMode::RotateHalf : RotaryMode::RotateEveryTwo;
    rotary_.rotary_dim = int(config.rotary_dim);
    rotary_.theta = config.rope_theta;
    rotary_.position_scale = config.rope_scale;
    rotary_table_ = std::make_unique<RotaryTable>(rotary_, n_ctx);
  }
  AttentionParams& ap = attention_shape_;
  ap.n_heads = int(config.n_heads);
  ap.n_kv_heads = int(config.n_kv_heads);
  ap.head_dim = int(config.head_dim);
  ap.scale = config.attention_scale > 0 ? config.attention_scale : 1.0f / std::sqrt(float(config.head_dim));
  ap.causal = config.causal;
  ap.window = config.sliding_window;
  ap.alibi_slopes = alibi_.empty() ? nullptr : alibi_.data() + shard_.head_begin;
}

void CpuForward::run_layers(const int32_t* tokens, const int32_t* positions, int64_t n, KvStore& kv) {
  embed(tokens, positions, n);
  for (int64_t layer = 0; layer < config_.n_layers; ++layer) layer_forward(layer, positions, n, kv);
}

void CpuForward::head(const float* hidden, int64_t rows, float* out) {
  const int64_t dim = config_.dim;
  if (config_.final_norm) {
    norm(hidden, weights_.output_norm, weights_.output_norm_bias, ws_.xn.data(), rows);
    hidden = ws_.xn.data();
  }
  emit("result_norm", -1, hidden, rows * dim);
  if (!config_.lm_head) {
    std::copy_n(hidden, rows * dim, out);
    return;
  }
  if (config_.projects_embedding()) {
    matmul_rows(weights_.output_proj, hidden, ws_.embd.data(), rows);
    hidden = ws_.embd.data();
  }
  if (batch_invariant_ && rows < kInvariantRows) {  // the caller's buffer has no padding rows
    matmul_rows(weights_.output, hidden, padded_logits_.data(), rows);
    std::copy_n(padded_logits_.data(), rows * config_.n_vocab, out);
  } else {
    matmul(weights_.output, hidden, out, rows, pool_, level_for(weights_.output));
  }
  add_bias(out, weights_.output_bias, rows, config_.n_vocab);
  emit("logits", -1, out, rows * config_.n_vocab);
}

void CpuForward::embed(const int32_t* tokens, const int32_t* positions, int64_t n_tokens) {
  const int64_t dim = config_.dim;
  float* x = ws_.x.data();
  if (config_.projects_embedding()) {  // narrow rows, then the projection in
    embedding_rows(tokens, n_tokens, ws_.embd.data(), config_.embd_dim());
    matmul_rows(weights_.token_embd_proj, ws_.embd.data(), x, n_tokens);
  } else {
    embedding_rows(tokens, n_tokens, x, dim);
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
      dequantize_row(weights_.pos_embd, positions[t] + config_.position_offset, pos);
      for (int64_t i = 0; i < dim; ++i) row[i] += pos[i];
    }
  }
  if (weights_.token_embd_norm) norm(x, weights_.token_embd_norm, weights_.token_embd_norm_bias, x, n_tokens);
  emit("token_embd", -1, x, n_tokens * dim);
}

void CpuForward::embedding_rows(const int32_t* tokens, int64_t n_tokens, float* out, int64_t width) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int64_t row = tokens[t] - shard_.vocab_begin;  // another rank's token: its rows are zero here
    if (row >= 0 && row < config_.n_vocab)
      dequantize_row(weights_.token_embd, row, out + t * width);
    else
      std::fill_n(out + t * width, width, 0.0f);
  }
  sum_over_ranks(out, n_tokens * width);
}

void CpuForward::norm(const float* x, const float* weight, const float* bias, float* y, int64_t n_tokens) const {
  const int64_t dim = config_.dim;
  if (config_.norm == NormKind::Layer) {
    layer_norm(x, weight, bias, y, n_tokens, dim, config_.norm_eps);
  } else {
    rms_norm(x, weight, y, n_tokens, dim, config_.norm_eps);
    add_bias(y, bias, n_tokens, dim);
  }
}

CpuLevel CpuForward::level_for(const TensorView& w) const {
  return batch_invariant_ && w.dtype != DType::I8 ? std::min(level_, CpuLevel::Avx512) : level_;
}

void CpuForward::matmul_rows(const TensorView& w, const float* x, float* y, int64_t n) {
  if (batch_invariant_) n = std::max(n, w.dtype == DType::I8 ? kInvariantRowsInt8 : kInvariantRows);
  matmul(w, x, y, n, pool_, level_for(w));
}

void CpuForward::layer_forward(int64_t layer, const int32_t* positions, int64_t n, KvStore& kv) {
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
  matmul_rows(w.attn_qkv, attn_in, qkv, n);
  add_bias(qkv, w.attn_qkv_bias, n, qkv_dim);
  emit("qkv", layer, qkv, n * qkv_dim);

  // rotary (each row at its own position) + KV append
  for (int64_t t = 0; t < n; ++t) {
    std::memcpy(q + t * q_dim, qkv + t * qkv_dim, size_t(q_dim) * sizeof(float));
    std::memcpy(k + t * kv_dim, qkv + t * qkv_dim + q_dim, size_t(kv_dim) * sizeof(float));
  }
  if (c.position == PositionKind::Rotary) {
    rotary(q, positions, n, int(c.n_heads), int(c.head_dim), rotary_, rotary_table_.get());
    rotary(k, positions, n, int(c.n_kv_heads), int(c.head_dim), rotary_, rotary_table_.get());
  }
  emit("q", layer, q, n * q_dim);
  emit("k", layer, k, n * kv_dim);
  kv.store(layer, k, kv_dim, qkv + q_dim + kv_dim, qkv_dim, n);

  // attention
  AttentionParams ap = attention_shape_;
  ap.n_tokens = n;
  kv.attend(layer, q, att, ap, pool_);
  emit("attn", layer, att, n * q_dim);

  // output projection, summed over the ranks, + residual (deferred to the end of the layer for a parallel
  // residual)
  float* attn_proj = ws_.attn_proj.data();
  matmul_rows(w.attn_out, att, attn_proj, n);
  sum_over_ranks(attn_proj, n * dim);
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
  matmul_rows(w.ffn_up, ffn_in, up, n);
  float* hidden = up;
  if (is_gated(c.mlp)) {
    add_bias(up, w.ffn_up_bias, n, 2 * ffn);
    gated_activation(up, ws_.act.data(), n, ffn, activation_of(c.mlp));
    hidden = ws_.act.data();
  } else {
    bias_activation(up, w.ffn_up_bias, n, ffn, activation_of(c.mlp));
  }
  emit("ffn_act", layer, hidden, n * ffn);

  // down projection, summed over the ranks, + residual
  float* ffn_out = ws_.ffn_out.data();
  matmul_rows(w.ffn_down, hidden, ffn_out, n);
  sum_over_ranks(ffn_out, n * dim);
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

}  // namespace kiln
