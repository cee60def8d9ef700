// What the per-family Hugging Face mappings (convert/from_hf_*.cpp) share: typed config.json reads and
// kiln tensors built from HF tensors (stacked, transposed, regrouped by head, or constant).
#pragma once

#include <initializer_list>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "convert/conversion.h"
#include "convert/hf_folder.h"
#include "engine/error.h"
#include "engine/json_input.h"

namespace kiln::hf {

// Integers in config.json are sizes and counts: far below this, so products of three stay in 64 bits
// before ModelConfig::validate() bounds each one.
inline constexpr int64_t kMaxConfigInteger = int64_t(1) << 30;

// config.json[key] as T; throws naming the key when it is absent, of the wrong type or out of range.
template <typename T>
T value(const HfFolder& folder, const char* key) {
  const auto& config = folder.config();
  KILN_CHECK(config.contains(key), "'{}/config.json' lacks '{}'", folder.dir().string(), key);
  const nlohmann::json& v = config.at(key);
  const std::string what = fmt::format("'{}/config.json': '{}'", folder.dir().string(), key);
  if constexpr (std::is_same_v<T, int64_t>) {
    return json_integer(v, -kMaxConfigInteger, kMaxConfigInteger, what);
  } else if constexpr (std::is_same_v<T, float>) {
    return json_float(v, what);
  } else {
    try {
      return v.get<T>();
    } catch (const nlohmann::json::exception&) {
      fail("{} has the wrong type", what);
    }
  }
}

// config.json[key], or fallback when the key is absent or null.
template <typename T>
T value_or(const HfFolder& folder, const char* key, T fallback) {
  const auto it = folder.config().find(key);
  if (it == folder.config().end() || it->is_null()) return fallback;
  return value<T>(folder, key);
}

// The first of several spellings of one setting (families renamed keys over time: n_embd, hidden_size).
template <typename T>
T value_any(const HfFolder& folder, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    const auto it = folder.config().find(key);
    if (it != folder.config().end() && !it->is_null()) return value<T>(folder, key);
  }
  fail("'{}/config.json' lacks '{}'", folder.dir().string(), *keys.begin());
}

// The JSON file at folder/relative, or nullopt when there is none; throws when it is unreadable or too large.
std::optional<nlohmann::json> read_optional_json(const HfFolder& folder, const std::string& relative);

// The MLP activation named by config.json[key] (non-gated families).
MlpKind activation(const HfFolder& folder, const char* key, const std::string& fallback);

// Rotary settings: transformers 5 writes a "rope_parameters" object, older versions top-level
// "rope_theta" / "rope_scaling" (and GPT-NeoX "rotary_emb_base" / "rotary_pct"). Sets rope_theta,
// rope_scale and rotary_dim (from head_dim and the partial rotary factor).
void read_rope(const HfFolder& folder, ModelConfig& c);

// The shape every multi-head LayerNorm family names alike (GPT-2, GPT-J, NeoX, BLOOM, OPT, BERT), under
// either spelling: architecture, vocabulary, width, layers, heads (no GQA), LayerNorm.
void read_layer_norm_shape(const HfFolder& folder, ModelConfig& c, const char* architecture);

// The prefix the checkpoint puts before its tensor names ("transformer.", "model.decoder.", ""):
// the first candidate for which prefix + probe exists. Throws naming the probe when none does.
std::string find_prefix(const HfFolder& folder, std::initializer_list<const char*> candidates,
                        const std::string& probe);

// A kiln tensor made by stacking HF tensors: matrices by rows (q, k, v -> attn_qkv), vectors end to end.
SourceTensor stacked(const HfFolder& folder, std::string name, const std::vector<std::string>& parts);
// One HF tensor as it is.
inline SourceTensor same(const HfFolder& folder, std::string name, const std::string& part) {
  return stacked(folder, std::move(name), {part});
}
// A [in, out] matrix (GPT-2's Conv1D) stored as [out, in].
SourceTensor transposed(const HfFolder& folder, std::string name, const std::string& part);
// A fused QKV matrix or bias whose rows run [head][q, k, v][head_dim] (GPT-NeoX, BLOOM), reordered to all
// Q rows, then K, then V.
SourceTensor heads_to_qkv(const HfFolder& folder, std::string name, const std::string& part, int64_t n_heads,
                          int64_t head_dim);
// A vector of one value (a LayerNorm without learned weights: ones and zeros).
SourceTensor filled(std::string name, int64_t n, float value);

}  // namespace kiln::hf

namespace kiln::hf {

// One function per family: fills conversion.config (validated later) and conversion.tensors from the
// folder, which must outlive the conversion. from_hf.cpp picks one by config.json's model_type.
void map_llama(const HfFolder& folder, Conversion& conversion);    // llama, mistral, qwen2
void map_gpt2(const HfFolder& folder, Conversion& conversion);
void map_gptj(const HfFolder& folder, Conversion& conversion);
void map_gptneox(const HfFolder& folder, Conversion& conversion);
void map_bloom(const HfFolder& folder, Conversion& conversion);
void map_opt(const HfFolder& folder, Conversion& conversion);
void map_bert(const HfFolder& folder, Conversion& conversion);

}  // namespace kiln::hf
