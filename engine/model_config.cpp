#include "engine/model_config.h"

#include <cmath>
#include <type_traits>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/json_input.h"

namespace kiln {
namespace {

template <typename Enum, size_t N>
Enum enum_from_string(const std::string& field, const std::string& value,
                      const std::pair<Enum, const char*> (&names)[N]) {
  std::string choices;
  for (const auto& [e, name] : names) {
    if (value == name) return e;
    choices += choices.empty() ? name : std::string(", ") + name;
  }
  fail("model field '{}' is '{}', which kiln does not know (one of: {}): convert the model again", field, value,
       choices);
}

template <typename Enum, size_t N>
std::string enum_to_string(Enum value, const std::pair<Enum, const char*> (&names)[N]) {
  for (const auto& [e, name] : names)
    if (e == value) return name;
  return "?";
}

constexpr std::pair<NormKind, const char*> kNorms[] = {{NormKind::Rms, "rms"}, {NormKind::Layer, "layer"}};
constexpr std::pair<PositionKind, const char*> kPositions[] = {{PositionKind::Rotary, "rotary"},
                                                               {PositionKind::Learned, "learned"},
                                                               {PositionKind::Alibi, "alibi"},
                                                               {PositionKind::None, "none"}};
constexpr std::pair<RotaryStyle, const char*> kRotaryStyles[] = {{RotaryStyle::Half, "half"},
                                                                 {RotaryStyle::EveryTwo, "every_two"}};
constexpr std::pair<MlpKind, const char*> kMlps[] = {{MlpKind::SiluGated, "silu_gated"},
                                                     {MlpKind::GeluGated, "gelu_gated"},
                                                     {MlpKind::Gelu, "gelu"},
                                                     {MlpKind::GeluTanh, "gelu_tanh"},
                                                     {MlpKind::Relu, "relu"}};
constexpr std::pair<Pooling, const char*> kPoolings[] = {
    {Pooling::None, "none"}, {Pooling::Mean, "mean"}, {Pooling::Cls, "cls"}, {Pooling::Max, "max"}};

// Reads model[key] as T, or keeps the default when absent; a wrong JSON type is an error.
// Numbers are range-checked before conversion (a float of 1e300 into int64_t or float is undefined);
// validate() bounds the sizes further.
template <typename T>
void read(const nlohmann::json& model, const char* key, T& out) {
  auto it = model.find(key);
  if (it == model.end()) return;
  try {
    if constexpr (std::is_same_v<T, int64_t>) {
      out = json_integer(*it, -(int64_t(1) << 62), int64_t(1) << 62, fmt::format("model field '{}'", key));
    } else if constexpr (std::is_same_v<T, float>) {
      out = json_float(*it, fmt::format("model field '{}'", key));
    } else {
      out = it->get<T>();
    }
  } catch (const nlohmann::json::exception&) {
    fail("model field '{}' has the wrong type ({}): convert the model again", key, it->type_name());
  }
}

template <typename T>
void require(const nlohmann::json& model, const char* key, T& out) {
  KILN_CHECK(model.contains(key), "model metadata lacks the field '{}': convert the model again", key);
  read(model, key, out);
}

}  // namespace

std::string to_string(NormKind v) { return enum_to_string(v, kNorms); }
std::string to_string(PositionKind v) { return enum_to_string(v, kPositions); }
std::string to_string(RotaryStyle v) { return enum_to_string(v, kRotaryStyles); }
std::string to_string(MlpKind v) { return enum_to_string(v, kMlps); }
std::string to_string(Pooling v) { return enum_to_string(v, kPoolings); }

void ModelConfig::validate() const {
  constexpr int64_t kMaxDim = int64_t(1) << 20;
  auto in_range = [](const char* field, int64_t value, int64_t lo, int64_t hi) {
    KILN_CHECK(value >= lo && value <= hi, "model field '{}' = {} is outside [{}, {}]", field, value, lo, hi);
  };
  in_range("n_vocab", n_vocab, 1, int64_t(1) << 24);
  in_range("dim", dim, 1, kMaxDim);
  in_range("n_layers", n_layers, 1, 4096);
  in_range("n_heads", n_heads, 1, 4096);
  in_range("n_kv_heads", n_kv_heads, 1, n_heads);
  in_range("head_dim", head_dim, 1, 4096);
  in_range("ffn_dim", ffn_dim, 1, kMaxDim);
  in_range("n_ctx_train", n_ctx_train, 1, int64_t(1) << 24);
  KILN_CHECK(n_heads % n_kv_heads == 0, "n_heads {} is not a multiple of n_kv_heads {}", n_heads, n_kv_heads);
  KILN_CHECK(std::isfinite(norm_eps) && norm_eps > 0 && norm_eps < 1, "norm_eps {} is not in (0, 1)", norm_eps);
  if (position == PositionKind::Rotary) {
    KILN_CHECK(rotary_dim > 0 && rotary_dim <= head_dim && rotary_dim % 2 == 0,
               "rotary_dim {} must be even and in [2, head_dim {}]", rotary_dim, head_dim);
    KILN_CHECK(std::isfinite(rope_theta) && rope_theta > 1, "rope_theta {} must be > 1", rope_theta);
    KILN_CHECK(std::isfinite(rope_scale) && rope_scale > 0, "rope_scale {} must be > 0", rope_scale);
  }
  in_range("position_offset", position_offset, 0, 1 << 16);
  in_range("sliding_window", sliding_window, 0, int64_t(1) << 24);
  KILN_CHECK(std::isfinite(attention_scale) && attention_scale >= 0, "attention_scale {} is invalid", attention_scale);
  KILN_CHECK(std::isfinite(embedding_scale) && embedding_scale > 0, "embedding_scale {} is invalid", embedding_scale);
  KILN_CHECK(!shared_layer_norm || parallel_residual, "shared_layer_norm needs parallel_residual");
  in_range("embedding_dim", embedding_dim, 0, kMaxDim);
  in_range("n_token_types", n_token_types, 0, 1 << 16);
  in_range("pooling_max_tokens", pooling_max_tokens, 0, int64_t(1) << 24);
  // A post-norm layer normalises the sum of one branch: a parallel residual has no such sum.
  KILN_CHECK(!post_norm || !parallel_residual, "post_norm does not combine with parallel_residual");
  KILN_CHECK(lm_head || !tied_embeddings, "tied_embeddings needs an LM head (lm_head is false)");
}

ModelConfig model_config_from_json(const nlohmann::json& model) {
  KILN_CHECK(model.is_object(), "model metadata is not a JSON object: convert the model again");
  ModelConfig c;
  std::string norm = "rms", position = "rotary", rotary_style = "half", mlp = "silu_gated", pooling = "none";
  require(model, "architecture", c.architecture);
  require(model, "n_vocab", c.n_vocab);
  require(model, "dim", c.dim);
  require(model, "n_layers", c.n_layers);
  require(model, "n_heads", c.n_heads);
  require(model, "n_kv_heads", c.n_kv_heads);
  require(model, "head_dim", c.head_dim);
  require(model, "ffn_dim", c.ffn_dim);
  require(model, "n_ctx_train", c.n_ctx_train);
  read(model, "norm", norm);
  read(model, "norm_eps", c.norm_eps);
  read(model, "position", position);
  read(model, "rotary_style", rotary_style);
  read(model, "rotary_dim", c.rotary_dim);
  read(model, "rope_theta", c.rope_theta);
  read(model, "rope_scale", c.rope_scale);
  read(model, "position_offset", c.position_offset);
  read(model, "mlp", mlp);
  read(model, "parallel_residual", c.parallel_residual);
  read(model, "shared_layer_norm", c.shared_layer_norm);
  read(model, "attention_bias", c.attention_bias);
  read(model, "mlp_bias", c.mlp_bias);
  read(model, "tied_embeddings", c.tied_embeddings);
  read(model, "causal", c.causal);
  read(model, "sliding_window", c.sliding_window);
  read(model, "attention_scale", c.attention_scale);
  read(model, "embedding_scale", c.embedding_scale);
  read(model, "embedding_dim", c.embedding_dim);
  read(model, "n_token_types", c.n_token_types);
  read(model, "post_norm", c.post_norm);
  read(model, "final_norm", c.final_norm);
  read(model, "lm_head", c.lm_head);
  read(model, "pooling", pooling);
  read(model, "pooling_normalize", c.pooling_normalize);
  read(model, "pooling_max_tokens", c.pooling_max_tokens);
  c.pooling = enum_from_string("pooling", pooling, kPoolings);
  c.norm = enum_from_string("norm", norm, kNorms);
  c.position = enum_from_string("position", position, kPositions);
  c.rotary_style = enum_from_string("rotary_style", rotary_style, kRotaryStyles);
  c.mlp = enum_from_string("mlp", mlp, kMlps);
  c.validate();
  return c;
}

nlohmann::json model_config_to_json(const ModelConfig& c) {
  return {
      {"architecture", c.architecture},
      {"n_vocab", c.n_vocab},
      {"dim", c.dim},
      {"n_layers", c.n_layers},
      {"n_heads", c.n_heads},
      {"n_kv_heads", c.n_kv_heads},
      {"head_dim", c.head_dim},
      {"ffn_dim", c.ffn_dim},
      {"n_ctx_train", c.n_ctx_train},
      {"norm", to_string(c.norm)},
      {"norm_eps", c.norm_eps},
      {"position", to_string(c.position)},
      {"rotary_style", to_string(c.rotary_style)},
      {"rotary_dim", c.rotary_dim},
      {"rope_theta", c.rope_theta},
      {"rope_scale", c.rope_scale},
      {"position_offset", c.position_offset},
      {"mlp", to_string(c.mlp)},
      {"parallel_residual", c.parallel_residual},
      {"shared_layer_norm", c.shared_layer_norm},
      {"attention_bias", c.attention_bias},
      {"mlp_bias", c.mlp_bias},
      {"tied_embeddings", c.tied_embeddings},
      {"causal", c.causal},
      {"sliding_window", c.sliding_window},
      {"attention_scale", c.attention_scale},
      {"embedding_scale", c.embedding_scale},
      {"embedding_dim", c.embedding_dim},
      {"n_token_types", c.n_token_types},
      {"post_norm", c.post_norm},
      {"final_norm", c.final_norm},
      {"lm_head", c.lm_head},
      {"pooling", to_string(c.pooling)},
      {"pooling_normalize", c.pooling_normalize},
      {"pooling_max_tokens", c.pooling_max_tokens},
  };
}

}  // namespace kiln
