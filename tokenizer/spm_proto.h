// Writes a SentencePiece ModelProto in protobuf wire format from a vocabulary (pieces, scores,
// types), so libsentencepiece can run a model that arrived without its .model file (GGUF "llama").
#pragma once

#include <string>

#include "tokenizer/tokenizer_data.h"

namespace kiln {

// A serialized BPE ModelProto: identity normalization, whitespace as U+2581, a dummy prefix when
// data.add_space_prefix, byte fallback when the vocabulary has byte pieces.
[[nodiscard]] std::string build_spm_model_proto(const TokenizerData& data);

}  // namespace kiln
