#include "convert/from_hf.h"

#include <fmt/format.h>

#include <string_view>

#include "convert/hf_mapping.h"
#include "engine/error.h"

namespace kiln {
namespace {

struct Family {
  std::string_view model_type;
  void (*map)(const HfFolder&, Conversion&);
};

constexpr Family kFamilies[] = {
    {"llama", hf::map_llama}, {"mistral", hf::map_llama}, {"qwen2", hf::map_llama},
    {"gpt2", hf::map_gpt2},   {"gptj", hf::map_gptj},     {"gpt_neox", hf::map_gptneox},
    {"bloom", hf::map_bloom}, {"opt", hf::map_opt},       {"bert", hf::map_bert},
};

}  // namespace

namespace hf {

void map_llama(const HfFolder& folder, Conversion& conv) {
  const std::string model_type = value<std::string>(folder, "model_type");
  ModelConfig& c = conv.config;
  c.architecture = model_type;
  c.n_vocab = value<int64_t>(folder, "vocab_size");
  c.dim = value<int64_t>(folder, "hidden_size");
  c.n_layers = value<int64_t>(folder, "num_hidden_layers");
  c.n_heads = value<int64_t>(folder, "num_attention_heads");
  c.n_kv_heads = value_or<int64_t>(folder, "num_key_value_heads", c.n_heads);
  KILN_CHECK(c.n_heads > 0, "num_attention_heads must be positive");
  c.head_dim = value_or<int64_t>(folder, "head_dim", c.dim / c.n_heads);
  c.ffn_dim = value<int64_t>(folder, "intermediate_size");
  c.n_ctx_train = value_or<int64_t>(folder, "max_position_embeddings", 4096);
  c.norm = NormKind::Rms;
  c.norm_eps = value_or<float>(folder, "rms_norm_eps", 1e-6f);
  c.position = PositionKind::Rotary;
  c.rotary_style = RotaryStyle::Half;
  read_rope(folder, c);
  c.mlp = MlpKind::SiluGated;
  // Qwen2 always has Q, K and V biases (and no output bias).
  c.attention_bias = model_type == "qwen2" || value_or<bool>(folder, "attention_bias", false);
  c.mlp_bias = value_or<bool>(folder, "mlp_bias", false);
  c.tied_embeddings = value_or<bool>(folder, "tie_word_embeddings", false);
  const bool uses_window = model_type == "mistral" || value_or<bool>(folder, "use_sliding_window", false);
  c.sliding_window = uses_window ? value_or<int64_t>(folder, "sliding_window", 0) : 0;

  auto& out = conv.tensors;
  out.push_back(same(folder, "token_embd.weight", "model.embed_tokens.weight"));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string src = fmt::format("model.layers.{}.", i), dst = fmt::format("blk.{}.", i);
    out.push_back(same(folder, dst + "attn_norm.weight", src + "input_layernorm.weight"));
    out.push_back(stacked(folder, dst + "attn_qkv.weight",
                          {src + "self_attn.q_proj.weight", src + "self_attn.k_proj.weight",
                           src + "self_attn.v_proj.weight"}));
    if (c.attention_bias) {
      out.push_back(stacked(folder, dst + "attn_qkv.bias",
                            {src + "self_attn.q_proj.bias", src + "self_attn.k_proj.bias",
                             src + "self_attn.v_proj.bias"}));
      if (folder.find(src + "self_attn.o_proj.bias"))
        out.push_back(same(folder, dst + "attn_out.bias", src + "self_attn.o_proj.bias"));
    }
    out.push_back(same(folder, dst + "attn_out.weight", src + "self_attn.o_proj.weight"));
    out.push_back(same(folder, dst + "ffn_norm.weight", src + "post_attention_layernorm.weight"));
    out.push_back(stacked(folder, dst + "ffn_up.weight", {src + "mlp.gate_proj.weight", src + "mlp.up_proj.weight"}));
    out.push_back(same(folder, dst + "ffn_down.weight", src + "mlp.down_proj.weight"));
    if (c.mlp_bias) {
      out.push_back(stacked(folder, dst + "ffn_up.bias", {src + "mlp.gate_proj.bias", src + "mlp.up_proj.bias"}));
      out.push_back(same(folder, dst + "ffn_down.bias", src + "mlp.down_proj.bias"));
    }
  }
  out.push_back(same(folder, "output_norm.weight", "model.norm.weight"));
  if (!c.tied_embeddings) out.push_back(same(folder, "output.weight", "lm_head.weight"));
}

}  // namespace hf

std::string supported_hf_model_types() {
  std::string types;
  for (const Family& f : kFamilies) types += fmt::format("{}{}", types.empty() ? "" : ", ", f.model_type);
  return types;
}

Conversion conversion_from_hf(const HfFolder& folder) {
  const std::string model_type = hf::value<std::string>(folder, "model_type");
  const Family* family = nullptr;
  for (const Family& f : kFamilies)
    if (f.model_type == model_type) family = &f;
  KILN_CHECK(family != nullptr, "'{}': model_type '{}' is not supported (supported: {}; see kiln convert --list-archs)",
             folder.dir().string(), model_type, supported_hf_model_types());
  Conversion conv;
  family->map(folder, conv);
  try {
    conv.config.validate();
  } catch (const Error& e) {
    fail("'{}': the {} config does not describe a model kiln can run: {}", folder.dir().string(), model_type,
         e.what());
  }
  conv.tokenizer = tokenizer_from_hf(folder);
  conv.provenance = {{"source", folder.dir().string()}, {"source_format", "huggingface safetensors"}};
  return conv;
}

}  // namespace kiln
