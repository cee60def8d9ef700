// SentencePiece tokenizers (Llama 2, TinyLlama, Mistral) through libsentencepiece, from the
// embedded .model or from a vocabulary rebuilt into one.
#pragma once

#include <memory>

#include "tokenizer/tokenizer.h"

namespace kiln {

[[nodiscard]] std::unique_ptr<Tokenizer> make_spm_tokenizer(const TokenizerData& data);

}  // namespace kiln
