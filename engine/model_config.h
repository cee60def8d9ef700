// The model's hyper-parameters and family description, read once from the .kiln metadata ("model"
// object, docs/FORMAT.md) and immutable after. A family is data: the one layer forward reads these fields.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace kiln {

enum class NormKind { Rms, Layer };
enum class PositionKind { Rotary, Learned, Alibi, None };
enum class RotaryStyle { Half, EveryTwo };  // see kernels/cpu/rotary.h
enum class MlpKind { SiluGated, GeluGated, Gelu, GeluTanh, Relu };
enum class Pooling { None, Mean, Cls, Max };  // how `kiln embed` reduces an encoder's hidden states

struct ModelConfig {
  std::string architecture;  // "llama", "gpt2", ...: for messages; behaviour comes from the fields below
  int64_t n_vocab = 0;
  int64_t dim = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t ffn_dim = 0;
  int64_t n_ctx_train = 0;
  NormKind norm = NormKind::Rms;
  float norm_eps = 1e-5f;
  PositionKind position = PositionKind::Rotary;
  RotaryStyle rotary_style = RotaryStyle::Half;
  int64_t rotary_dim = 0;       // <= head_dim
  float rope_theta = 10000.0f;
  float rope_scale = 1.0f;      // linear scaling factor (positions are divided by it)
  int64_t position_offset = 0;  // learned positions: index = position + offset (OPT uses 2)
  MlpKind mlp = MlpKind::SiluGated;
  bool parallel_residual = false;  // attention and MLP read the same input (GPT-J, NeoX)
  bool shared_layer_norm = false;  // parallel residual with one norm (GPT-J)
  bool attention_bias = false;     // QKV (and output) projections have biases
  bool mlp_bias = false;
  bool tied_embeddings = false;    // LM head = token embedding
  bool causal = true;              // false: bidirectional encoder (BERT)
  int64_t sliding_window = 0;      // > 0: local attention window
  float attention_scale = 0;       // 0: 1 / sqrt(head_dim)
  float embedding_scale = 1.0f;    // multiplies the token embedding (1 for most families)
  int64_t embedding_dim = 0;       // > 0 and != dim: token embeddings this wide, projected in and out (OPT)
  int64_t n_token_types = 0;       // > 0: token-type embeddings; row 0 is added to every token (BERT)
  bool post_norm = false;          // attn_norm / ffn_norm follow each residual add instead of leading it
  bool final_norm = true;          // output_norm before the head (post-norm families have none)
  bool lm_head = true;             // false: an encoder, whose forward returns the final hidden states
  Pooling pooling = Pooling::None;     // encoders: the sentence embedding's reduction
  bool pooling_normalize = false;      // encoders: scale the pooled embedding to unit length
  int64_t pooling_max_tokens = 0;      // encoders: inputs are cut to this many tokens (0: the context)

  // The width of the token embedding rows and of the LM head's input.
  int64_t embd_dim() const { return embedding_dim > 0 ? embedding_dim : dim; }
  bool projects_embedding() const { return embd_dim() != dim; }
  // Values per token that forward() writes: logits, or hidden states for a model without an LM head.
  int64_t output_width() const { return lm_head ? n_vocab : dim; }

  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }

  // Checks every field for sense and consistency; throws kiln::Error naming the field.
  void validate() const;
};

ModelConfig model_config_from_json(const nlohmann::json& model);  // validates
nlohmann::json model_config_to_json(const ModelConfig& config);

std::string to_string(NormKind);
std::string to_string(PositionKind);
std::string to_string(RotaryStyle);
std::string to_string(MlpKind);
std::string to_string(Pooling);

}  // namespace kiln
