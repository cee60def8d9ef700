#include "convert/from_hf.h"

#include <fmt/format.h>

#include "engine/error.h"

namespace kiln {
namespace {

template <typename T>
T config_value(const HfFolder& folder, const char* key) {
  const auto& config = folder.config();
  KILN_CHECK(config.contains(key), "'{}/config.json' lacks '{}'", folder.dir().string(), key);
  try {
    return config.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("'{}/config.json': '{}' has the wrong type", folder.dir().string(), key);
  }
}

template <typename T>
T config_value_or(const HfFolder& folder, const char* key, T fallback) {
  const auto& config = folder.config();
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  return config_value<T>(folder, key);
}

// A kiln tensor made by stacking HF tensors: matrices by rows (q, k, v -> attn_qkv), vectors end to end
// (their biases).
SourceTensor stacked(const HfFolder& folder, std::string name, const std::vector<std::string>& parts) {
  SourceTensor t;
  t.name = std::move(name);
  int64_t rows = 0, cols = -1, numel = 0;
  size_t n_vectors = 0;
  std::vector<uint64_t> sizes;
  for (const auto& part : parts) {
    const HfTensorRef ref = folder.tensor(part);
    const auto& shape = ref.tensor->shape;
    KILN_CHECK(shape.size() == 1 || shape.size() == 2, "tensor '{}' has shape {}, expected 1 or 2 dims", part,
               ref.tensor->shape_string());
    if (shape.size() == 1) {
      ++n_vectors;
    } else {
      KILN_CHECK(cols < 0 || int64_t(shape[1]) == cols, "tensor '{}' has rows of {}, expected {}", part, shape[1],
                 cols);
      cols = int64_t(shape[1]);
      rows += int64_t(shape[0]);
    }
    numel += int64_t(ref.tensor->numel);
    sizes.push_back(ref.tensor->numel);
  }
  KILN_CHECK(n_vectors == 0 || n_vectors == parts.size(), "cannot stack vectors with matrices for '{}'", t.name);
  t.dims = n_vectors ? std::vector<int64_t>{numel} : std::vector<int64_t>{rows, cols};
  t.read = [&folder, parts, sizes](float* out) {
    for (size_t i = 0; i < parts.size(); ++i) {
      folder.read_f32(parts[i], out);
      out += sizes[i];
    }
  };
  return t;
}

// Rotary settings: transformers 5 writes a "rope_parameters" object, older versions top-level
// "rope_theta" and "rope_scaling".
void read_rope(const HfFolder& folder, ModelConfig& c) {
  const auto& config = folder.config();
  nlohmann::json rope = nlohmann::json::object();
  if (auto it = config.find("rope_parameters"); it != config.end() && it->is_object()) rope = *it;
  if (auto it = config.find("rope_scaling"); it != config.end() && it->is_object()) rope.update(*it);
  try {
    c.rope_theta = rope.value("rope_theta", config_value_or<float>(folder, "rope_theta", 10000.0f));
    const std::string type = rope.value("rope_type", rope.value("type", std::string("default")));
    if (type == "linear") {
      c.rope_scale = rope.value("factor", 1.0f);
    } else {
      KILN_CHECK(type == "default", "'{}': rope type '{}' is not supported (default and linear are)",
                 folder.dir().string(), type);
    }
    const float partial = rope.value("partial_rotary_factor", config_value_or<float>(folder, "partial_rotary_factor", 1.0f));
    c.rotary_dim = int64_t(float(c.head_dim) * partial) / 2 * 2;
  } catch (const nlohmann::json::exception& e) {
    fail("'{}/config.json': unexpected rope settings: {}", folder.dir().string(), e.what());
  }
}

}  // namespace

Conversion conversion_from_hf(const HfFolder& folder) {
  const std::string model_type = config_value<std::string>(folder, "model_type");
  KILN_CHECK(model_type == "llama" || model_type == "mistral" || model_type == "qwen2",
             "'{}': model_type '{}' is not supported yet (supported: llama, mistral, qwen2)", folder.dir().string(),
             model_type);
  Conversion conv;
  ModelConfig& c = conv.config;
  c.architecture = model_type;
  c.n_vocab = config_value<int64_t>(folder, "vocab_size");
  c.dim = config_value<int64_t>(folder, "hidden_size");
  c.n_layers = config_value<int64_t>(folder, "num_hidden_layers");
  c.n_heads = config_value<int64_t>(folder, "num_attention_heads");
  c.n_kv_heads = config_value_or<int64_t>(folder, "num_key_value_heads", c.n_heads);
  KILN_CHECK(c.n_heads > 0, "num_attention_heads must be positive");
  c.head_dim = config_value_or<int64_t>(folder, "head_dim", c.dim / c.n_heads);
  c.ffn_dim = config_value<int64_t>(folder, "intermediate_size");
  c.n_ctx_train = config_value_or<int64_t>(folder, "max_position_embeddings", 4096);
  c.norm = NormKind::Rms;
  c.norm_eps = config_value_or<float>(folder, "rms_norm_eps", 1e-6f);
  c.position = PositionKind::Rotary;
  c.rotary_style = RotaryStyle::Half;
  read_rope(folder, c);
  c.mlp = MlpKind::SiluGated;
  // Qwen2 always has Q, K and V biases (and no output bias).
  c.attention_bias = model_type == "qwen2" || config_value_or<bool>(folder, "attention_bias", false);
  c.mlp_bias = config_value_or<bool>(folder, "mlp_bias", false);
  c.tied_embeddings = config_value_or<bool>(folder, "tie_word_embeddings", false);
  const bool uses_window = model_type == "mistral" || config_value_or<bool>(folder, "use_sliding_window", false);
  c.sliding_window = uses_window ? config_value_or<int64_t>(folder, "sliding_window", 0) : 0;
  c.validate();

  conv.tokenizer = tokenizer_from_hf(folder);
  conv.provenance = {{"source", folder.dir().string()}, {"source_format", "huggingface safetensors"}};
  auto& out = conv.tensors;
  out.push_back(stacked(folder, "token_embd.weight", {"model.embed_tokens.weight"}));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string src = fmt::format("model.layers.{}.", i), dst = fmt::format("blk.{}.", i);
    out.push_back(stacked(folder, dst + "attn_norm.weight", {src + "input_layernorm.weight"}));
    out.push_back(stacked(folder, dst + "attn_qkv.weight",
                          {src + "self_attn.q_proj.weight", src + "self_attn.k_proj.weight", src + "self_attn.v_proj.weight"}));
    if (c.attention_bias) {
      out.push_back(stacked(folder, dst + "attn_qkv.bias",
                                 {src + "self_attn.q_proj.bias", src + "self_attn.k_proj.bias", src + "self_attn.v_proj.bias"}));
      if (folder.find(src + "self_attn.o_proj.bias"))
        out.push_back(stacked(folder, dst + "attn_out.bias", {src + "self_attn.o_proj.bias"}));
    }
    out.push_back(stacked(folder, dst + "attn_out.weight", {src + "self_attn.o_proj.weight"}));
    out.push_back(stacked(folder, dst + "ffn_norm.weight", {src + "post_attention_layernorm.weight"}));
    out.push_back(stacked(folder, dst + "ffn_up.weight", {src + "mlp.gate_proj.weight", src + "mlp.up_proj.weight"}));
    out.push_back(stacked(folder, dst + "ffn_down.weight", {src + "mlp.down_proj.weight"}));
    if (c.mlp_bias) {
      out.push_back(stacked(folder, dst + "ffn_up.bias", {src + "mlp.gate_proj.bias", src + "mlp.up_proj.bias"}));
      out.push_back(stacked(folder, dst + "ffn_down.bias", {src + "mlp.down_proj.bias"}));
    }
  }
  out.push_back(stacked(folder, "output_norm.weight", {"model.norm.weight"}));
  if (!c.tied_embeddings) out.push_back(stacked(folder, "output.weight", {"lm_head.weight"}));
  return conv;
}

}  // namespace kiln
