// Synthetic models: llama-architecture .kiln files with random weights at real models' shapes, for speed
// measurements (a decoder's speed does not depend on its weights' values). The header's synthetic flag
// marks them; the tokenizer is a placeholder vocabulary of the shape's size.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "convert/conversion.h"
#include "engine/model_config.h"
#include "tokenizer/tokenizer_data.h"

namespace kiln {

struct SyntheticShape {
  std::string_view name;
  int64_t dim, n_layers, n_heads, n_kv_heads, ffn_dim, n_vocab;
  float rope_theta;
  bool tied_embeddings;
};

// smollm2-135m, tinyllama-1.1b, llama2-7b, llama3-8b, llama2-70b, and test-tiny (for tests).
std::span<const SyntheticShape> synthetic_shapes();

// The llama config of a shape; throws kiln::Error listing the shapes for an unknown name.
[[nodiscard]] ModelConfig synthetic_config(std::string_view name);

// n_vocab SentencePiece-kind tokens: <unk>, <s>, </s>, the 256 byte tokens, then placeholders.
[[nodiscard]] TokenizerData synthetic_tokenizer(int64_t n_vocab);

// Writes the shape's model with matrices of normal(0, 0.02) values in options.weight_dtype and norms of 1.
// One random block per tensor kind is drawn (on every core) and reused for every layer.
void write_synthetic(std::string_view name, const std::string& output, const ConvertOptions& options);

}  // namespace kiln
