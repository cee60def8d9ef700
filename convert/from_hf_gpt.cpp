// GPT-2, GPT-J, GPT-NeoX (Pythia) and BLOOM checkpoints -> kiln tensors: LayerNorm families whose
// differences (positions, residual shape, fused-QKV layout) are config fields the one layer forward reads.
#include <fmt/format.h>

#include "convert/hf_mapping.h"

namespace kiln::hf {
namespace {

// The hyper-parameters every one of these families names alike (under one of two spellings).
void read_common(const HfFolder& folder, ModelConfig& c, const char* architecture) {
  read_layer_norm_shape(folder, c, architecture);
  c.norm_eps = value_any<float>(folder, {"layer_norm_epsilon", "layer_norm_eps"});
}

// A LayerNorm's weight and bias.
void layer_norm(const HfFolder& folder, std::vector<SourceTensor>& out, const std::string& dst,
                const std::string& src) {
  out.push_back(same(folder, dst + ".weight", src + ".weight"));
  out.push_back(same(folder, dst + ".bias", src + ".bias"));
}

// A projection's weight and bias.
void linear(const HfFolder& folder, std::vector<SourceTensor>& out, const std::string& dst, const std::string& src) {
  out.push_back(same(folder, dst + ".weight", src + ".weight"));
  out.push_back(same(folder, dst + ".bias", src + ".bias"));
}

void refuse_if(const HfFolder& folder, const char* key, const char* what) {
  KILN_CHECK(!value_or<bool>(folder, key, false), "'{}': config.json sets {}: {} is not supported",
             folder.dir().string(), key, what);
}

}  // namespace

// Learned positions, pre-LayerNorm, GELU (tanh); Conv1D weights are stored [in, out] and transposed here.
void map_gpt2(const HfFolder& folder, Conversion& conv) {
  ModelConfig& c = conv.config;
  read_common(folder, c, "gpt2");
  c.ffn_dim = value_or<int64_t>(folder, "n_inner", 4 * c.dim);
  c.n_ctx_train = value_any<int64_t>(folder, {"n_positions", "max_position_embeddings"});
  c.position = PositionKind::Learned;
  c.mlp = activation(folder, "activation_function", "gelu_new");
  c.attention_bias = c.mlp_bias = true;
  c.tied_embeddings = value_or<bool>(folder, "tie_word_embeddings", true);
  refuse_if(folder, "scale_attn_by_inverse_layer_idx", "scaling attention by the layer index");
  refuse_if(folder, "add_cross_attention", "cross-attention");
  if (!value_or<bool>(folder, "scale_attn_weights", true)) c.attention_scale = 1.0f;

  const std::string p = find_prefix(folder, {"transformer.", ""}, "wte.weight");
  auto& out = conv.tensors;
  out.push_back(same(folder, "token_embd.weight", p + "wte.weight"));
  out.push_back(same(folder, "pos_embd.weight", p + "wpe.weight"));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string src = fmt::format("{}h.{}.", p, i), dst = fmt::format("blk.{}.", i);
    layer_norm(folder, out, dst + "attn_norm", src + "ln_1");
    out.push_back(transposed(folder, dst + "attn_qkv.weight", src + "attn.c_attn.weight"));
    out.push_back(same(folder, dst + "attn_qkv.bias", src + "attn.c_attn.bias"));
    out.push_back(transposed(folder, dst + "attn_out.weight", src + "attn.c_proj.weight"));
    out.push_back(same(folder, dst + "attn_out.bias", src + "attn.c_proj.bias"));
    layer_norm(folder, out, dst + "ffn_norm", src + "ln_2");
    out.push_back(transposed(folder, dst + "ffn_up.weight", src + "mlp.c_fc.weight"));
    out.push_back(same(folder, dst + "ffn_up.bias", src + "mlp.c_fc.bias"));
    out.push_back(transposed(folder, dst + "ffn_down.weight", src + "mlp.c_proj.weight"));
    out.push_back(same(folder, dst + "ffn_down.bias", src + "mlp.c_proj.bias"));
  }
  layer_norm(folder, out, "output_norm", p + "ln_f");
  if (!c.tied_embeddings) out.push_back(same(folder, "output.weight", "lm_head.weight"));
}

// Partial rotary over every-two pairs; attention and MLP in parallel from one LayerNorm; an LM head bias.
void map_gptj(const HfFolder& folder, Conversion& conv) {
  ModelConfig& c = conv.config;
  read_common(folder, c, "gptj");
  c.ffn_dim = value_or<int64_t>(folder, "n_inner", 4 * c.dim);
  c.n_ctx_train = value_any<int64_t>(folder, {"n_positions", "max_position_embeddings"});
  c.position = PositionKind::Rotary;
  c.rotary_style = RotaryStyle::EveryTwo;
  c.rotary_dim = value_or<int64_t>(folder, "rotary_dim", c.head_dim);
  c.rope_theta = 10000.0f;
  c.mlp = activation(folder, "activation_function", "gelu_new");
  c.parallel_residual = c.shared_layer_norm = true;
  c.mlp_bias = true;
  c.tied_embeddings = value_or<bool>(folder, "tie_word_embeddings", false);

  const std::string p = find_prefix(folder, {"transformer.", ""}, "wte.weight");
  auto& out = conv.tensors;
  out.push_back(same(folder, "token_embd.weight", p + "wte.weight"));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string src = fmt::format("{}h.{}.", p, i), dst = fmt::format("blk.{}.", i);
    layer_norm(folder, out, dst + "attn_norm", src + "ln_1");
    out.push_back(stacked(folder, dst + "attn_qkv.weight",
                          {src + "attn.q_proj.weight", src + "attn.k_proj.weight", src + "attn.v_proj.weight"}));
    out.push_back(same(folder, dst + "attn_out.weight", src + "attn.out_proj.weight"));
    linear(folder, out, dst + "ffn_up", src + "mlp.fc_in");
    linear(folder, out, dst + "ffn_down", src + "mlp.fc_out");
  }
  layer_norm(folder, out, "output_norm", p + "ln_f");
  if (!c.tied_embeddings) out.push_back(same(folder, "output.weight", "lm_head.weight"));
  if (folder.find("lm_head.bias")) out.push_back(same(folder, "output.bias", "lm_head.bias"));
}

// Partial rotary (rotate-half), a parallel residual with two LayerNorms, QKV fused per head.
void map_gptneox(const HfFolder& folder, Conversion& conv) {
  ModelConfig& c = conv.config;
  read_common(folder, c, "gptneox");
  c.ffn_dim = value<int64_t>(folder, "intermediate_size");
  c.n_ctx_train = value<int64_t>(folder, "max_position_embeddings");
  c.position = PositionKind::Rotary;
  c.rotary_style = RotaryStyle::Half;
  read_rope(folder, c);
  c.mlp = activation(folder, "hidden_act", "gelu");
  c.parallel_residual = value_or<bool>(folder, "use_parallel_residual", true);
  c.attention_bias = value_or<bool>(folder, "attention_bias", true);
  c.mlp_bias = true;
  c.tied_embeddings = value_or<bool>(folder, "tie_word_embeddings", false);

  const std::string p = find_prefix(folder, {"gpt_neox.", ""}, "embed_in.weight");
  auto& out = conv.tensors;
  out.push_back(same(folder, "token_embd.weight", p + "embed_in.weight"));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string src = fmt::format("{}layers.{}.", p, i), dst = fmt::format("blk.{}.", i);
    layer_norm(folder, out, dst + "attn_norm", src + "input_layernorm");
    out.push_back(heads_to_qkv(folder, dst + "attn_qkv.weight", src + "attention.query_key_value.weight", c.n_heads,
                               c.head_dim));
    out.push_back(same(folder, dst + "attn_out.weight", src + "attention.dense.weight"));
    if (c.attention_bias) {
      out.push_back(heads_to_qkv(folder, dst + "attn_qkv.bias", src + "attention.query_key_value.bias", c.n_heads,
                                 c.head_dim));
      out.push_back(same(folder, dst + "attn_out.bias", src + "attention.dense.bias"));
    }
    layer_norm(folder, out, dst + "ffn_norm", src + "post_attention_layernorm");
    linear(folder, out, dst + "ffn_up", src + "mlp.dense_h_to_4h");
    linear(folder, out, dst + "ffn_down", src + "mlp.dense_4h_to_h");
  }
  layer_norm(folder, out, "output_norm", p + "final_layer_norm");
  if (!c.tied_embeddings) out.push_back(same(folder, "output.weight", "embed_out.weight"));
}

// ALiBi, a LayerNorm on the embeddings, QKV fused per head, tied LM head.
void map_bloom(const HfFolder& folder, Conversion& conv) {
  ModelConfig& c = conv.config;
  read_common(folder, c, "bloom");
  c.ffn_dim = 4 * c.dim;
  // ALiBi has no position table: the training length (2048 for every published BLOOM) only sets the
  // default context.
  c.n_ctx_train = value_or<int64_t>(folder, "seq_length", 2048);
  c.position = PositionKind::Alibi;
  c.mlp = MlpKind::GeluTanh;
  c.attention_bias = c.mlp_bias = true;
  c.tied_embeddings = value_or<bool>(folder, "tie_word_embeddings", true);
  refuse_if(folder, "apply_residual_connection_post_layernorm", "a residual taken after the LayerNorm");

  const std::string p = find_prefix(folder, {"transformer.", ""}, "word_embeddings.weight");
  auto& out = conv.tensors;
  out.push_back(same(folder, "token_embd.weight", p + "word_embeddings.weight"));
  layer_norm(folder, out, "token_embd_norm", p + "word_embeddings_layernorm");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string src = fmt::format("{}h.{}.", p, i), dst = fmt::format("blk.{}.", i);
    layer_norm(folder, out, dst + "attn_norm", src + "input_layernorm");
    for (const char* w : {"weight", "bias"})
      out.push_back(heads_to_qkv(folder, dst + "attn_qkv." + w, src + "self_attention.query_key_value." + w,
                                 c.n_heads, c.head_dim));
    linear(folder, out, dst + "attn_out", src + "self_attention.dense");
    layer_norm(folder, out, dst + "ffn_norm", src + "post_attention_layernorm");
    linear(folder, out, dst + "ffn_up", src + "mlp.dense_h_to_4h");
    linear(folder, out, dst + "ffn_down", src + "mlp.dense_4h_to_h");
  }
  layer_norm(folder, out, "output_norm", p + "ln_f");
  if (!c.tied_embeddings) out.push_back(same(folder, "output.weight", "lm_head.weight"));
}

}  // namespace kiln::hf
