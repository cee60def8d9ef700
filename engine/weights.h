// The model's weights as non-owning views, bound once by name and checked for dtype and shape. The views
// point into a mapped .kiln file or into memory a test owns; whoever provides them keeps them alive.
#pragma once

#include <functional>
#include <string_view>
#include <vector>

#include "engine/model_config.h"
#include "engine/tensor.h"

namespace kiln {

class KilnFile;

// Matrices are TensorViews of any weight dtype (f32, f16, bf16, int8); vectors are f32 and may be absent.
struct LayerWeights {
  const float* attn_norm = nullptr;       // [dim]
  const float* attn_norm_bias = nullptr;  // [dim] LayerNorm only
  TensorView attn_qkv;                    // [q_dim + 2 * kv_dim, dim]: Q rows, then K, then V
  const float* attn_qkv_bias = nullptr;   // [q_dim + 2 * kv_dim] or nullptr
  TensorView attn_out;                    // [dim, q_dim]
  const float* attn_out_bias = nullptr;   // [dim] or nullptr
  const float* ffn_norm = nullptr;        // [dim]; nullptr when shared_layer_norm
  const float* ffn_norm_bias = nullptr;   // [dim] or nullptr
  TensorView ffn_up;                      // gated: [2 * ffn_dim, dim] (gate rows, then up); else [ffn_dim, dim]
  const float* ffn_up_bias = nullptr;     // [rows of ffn_up] or nullptr
  TensorView ffn_down;                    // [dim, ffn_dim]
  const float* ffn_down_bias = nullptr;   // [dim] or nullptr
};

// embd_dim is config.embd_dim(): dim, except for a projected embedding (OPT).
struct Weights {
  TensorView token_embd;                        // [n_vocab, embd_dim]
  TensorView token_embd_proj;                   // [dim, embd_dim] when embd_dim != dim (else empty)
  TensorView pos_embd;                          // [n_positions, dim]; learned positions only (else empty)
  TensorView token_type_embd;                   // [n_token_types, dim] when n_token_types > 0 (else empty)
  const float* token_embd_norm = nullptr;       // [dim] or nullptr (BLOOM, BERT)
  const float* token_embd_norm_bias = nullptr;  // [dim] or nullptr
  std::vector<LayerWeights> layers;             // [n_layers]
  const float* output_norm = nullptr;           // [dim]; nullptr without final_norm
  const float* output_norm_bias = nullptr;      // [dim] LayerNorm only
  TensorView output_proj;                       // [embd_dim, dim] when embd_dim != dim (else empty)
  TensorView output;                            // [n_vocab, embd_dim]; token_embd's view when tied; empty
                                                // without an LM head
  const float* output_bias = nullptr;           // [n_vocab] or nullptr (GPT-J)

  int64_t n_positions() const { return pos_embd.data ? pos_embd.dims[0] : 0; }
};

// Finds a tensor by its .kiln name; nullptr when absent. The view must outlive the Weights.
using TensorLookup = std::function<const TensorView*(std::string_view name)>;

// Binds every tensor the config calls for. Throws kiln::Error naming the tensor when one is missing or
// has the wrong dtype or shape.
[[nodiscard]] Weights bind_weights(const ModelConfig& config, const TensorLookup& lookup);
[[nodiscard]] Weights bind_weights(const KilnFile& file);

// Positions a sequence may reach: requested, or when 0 the model's training context (at most 4096); never
// past the learned positions. Throws kiln::Error for a negative or too long request.
int64_t context_size(const ModelConfig& config, const Weights& weights, int64_t requested);

}  // namespace kiln
