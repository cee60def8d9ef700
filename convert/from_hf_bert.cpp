// BERT checkpoints -> kiln tensors: a bidirectional post-LayerNorm encoder with token-type embeddings and
// no LM head. The sentence-transformers files beside the weights (modules.json, the pooling folder,
// sentence_bert_config.json) give how `kiln embed` pools; without them it mean-pools and normalizes.
#include <fmt/format.h>

#include "convert/hf_mapping.h"

namespace kiln::hf {
namespace {

// A LayerNorm's parameters: weight and bias, or gamma and beta in older checkpoints.
void bert_layer_norm(const HfFolder& folder, std::vector<SourceTensor>& out, const std::string& dst,
                     const std::string& src) {
  const bool old_names = !folder.find(src + ".weight") && folder.find(src + ".gamma");
  out.push_back(same(folder, dst + ".weight", src + (old_names ? ".gamma" : ".weight")));
  out.push_back(same(folder, dst + ".bias", src + (old_names ? ".beta" : ".bias")));
}

Pooling pooling_mode(const HfFolder& folder, const nlohmann::json& config, const std::string& path) {
  if (auto it = config.find("pooling_mode"); it != config.end() && it->is_string()) {
    const std::string mode = it->get<std::string>();
    if (mode == "mean") return Pooling::Mean;
    if (mode == "cls") return Pooling::Cls;
    if (mode == "max") return Pooling::Max;
    fail("'{}/{}': pooling mode '{}' is not supported (mean, cls and max are)", folder.dir().string(), path, mode);
  }
  std::vector<Pooling> modes;
  for (const auto& [key, mode] : {std::pair{"pooling_mode_mean_tokens", Pooling::Mean},
                                  std::pair{"pooling_mode_cls_token", Pooling::Cls},
                                  std::pair{"pooling_mode_max_tokens", Pooling::Max}})
    if (config.value(key, false)) modes.push_back(mode);
  for (const char* key : {"pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                          "pooling_mode_lasttoken"})
    KILN_CHECK(!config.value(key, false), "'{}/{}': {} is not supported (mean, cls and max pooling are)",
               folder.dir().string(), path, key);
  KILN_CHECK(modes.size() == 1, "'{}/{}' must choose exactly one pooling mode, it chooses {}", folder.dir().string(),
             path, modes.size());
  return modes[0];
}

// Pooling, normalization and input length from the sentence-transformers files.
void read_pooling(const HfFolder& folder, ModelConfig& c) {
  c.pooling = Pooling::Mean;
  c.pooling_normalize = true;
  try {
    if (const auto modules = read_optional_json(folder, "modules.json")) {
      c.pooling_normalize = false;
      for (const auto& module : *modules) {
        const std::string type = module.value("type", "");
        const std::string path = module.value("path", "");
        if (type.ends_with(".Transformer")) continue;
        if (type.ends_with(".Normalize")) {
          c.pooling_normalize = true;
        } else if (type.ends_with(".Pooling")) {
          KILN_CHECK(path.find("..") == std::string::npos && !std::filesystem::path(path).has_root_path(),
                     "modules.json names a folder outside the model: '{}'", path);
          const auto config = read_optional_json(folder, path + "/config.json");
          KILN_CHECK(config.has_value(), "'{}' lacks {}/config.json, which modules.json names", folder.dir().string(),
                     path);
          c.pooling = pooling_mode(folder, *config, path + "/config.json");
        } else {
          fail("'{}': the sentence-transformers module '{}' is not supported (Transformer, Pooling and Normalize are)",
               folder.dir().string(), type);
        }
      }
    }
    if (const auto st = read_optional_json(folder, "sentence_bert_config.json"))
      c.pooling_max_tokens = st->value("max_seq_length", int64_t(0));
  } catch (const nlohmann::json::exception& e) {
    fail("'{}': unexpected sentence-transformers settings: {}", folder.dir().string(), e.what());
  }
}

}  // namespace

void map_bert(const HfFolder& folder, Conversion& conv) {
  ModelConfig& c = conv.config;
  read_layer_norm_shape(folder, c, "bert");
  c.ffn_dim = value<int64_t>(folder, "intermediate_size");
  c.n_ctx_train = value<int64_t>(folder, "max_position_embeddings");
  c.norm_eps = value_or<float>(folder, "layer_norm_eps", 1e-12f);
  const std::string positions = value_or<std::string>(folder, "position_embedding_type", "absolute");
  KILN_CHECK(positions == "absolute", "'{}': position_embedding_type '{}' is not supported (absolute is)",
             folder.dir().string(), positions);
  KILN_CHECK(!value_or<bool>(folder, "is_decoder", false), "'{}': a BERT decoder is not supported (the encoder is)",
             folder.dir().string());
  c.position = PositionKind::Learned;
  c.mlp = activation(folder, "hidden_act", "gelu");
  c.attention_bias = c.mlp_bias = true;
  c.n_token_types = value_or<int64_t>(folder, "type_vocab_size", 2);
  c.post_norm = true;
  c.final_norm = false;
  c.lm_head = false;
  c.causal = false;
  read_pooling(folder, c);

  const std::string p = find_prefix(folder, {"", "bert."}, "embeddings.word_embeddings.weight");
  auto& out = conv.tensors;
  out.push_back(same(folder, "token_embd.weight", p + "embeddings.word_embeddings.weight"));
  out.push_back(same(folder, "pos_embd.weight", p + "embeddings.position_embeddings.weight"));
  out.push_back(same(folder, "token_type_embd.weight", p + "embeddings.token_type_embeddings.weight"));
  bert_layer_norm(folder, out, "token_embd_norm", p + "embeddings.LayerNorm");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string src = fmt::format("{}encoder.layer.{}.", p, i), dst = fmt::format("blk.{}.", i);
    for (const char* w : {"weight", "bias"}) {
      const std::string part = std::string(".") + w;
      out.push_back(stacked(folder, dst + "attn_qkv" + part,
                            {src + "attention.self.query" + part, src + "attention.self.key" + part,
                             src + "attention.self.value" + part}));
      out.push_back(same(folder, dst + "attn_out" + part, src + "attention.output.dense" + part));
      out.push_back(same(folder, dst + "ffn_up" + part, src + "intermediate.dense" + part));
      out.push_back(same(folder, dst + "ffn_down" + part, src + "output.dense" + part));
    }
    bert_layer_norm(folder, out, dst + "attn_norm", src + "attention.output.LayerNorm");
    bert_layer_norm(folder, out, dst + "ffn_norm", src + "output.LayerNorm");
  }
}

}  // namespace kiln::hf
