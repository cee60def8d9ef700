// GGUF (llama.cpp's format) -> Conversion. Supports general.architecture = llama (SmolLM2, Llama 2/3,
// TinyLlama, Mistral); the weights are dequantized exactly from F32/F16/BF16/Q8_0/Q4_0/Q4_1.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "convert/conversion.h"
#include "convert/gguf_reader.h"

namespace kiln {

// The returned conversion reads tensors from `gguf`, which must outlive it.
Conversion conversion_from_gguf(const GgufFile& gguf);

// The general.architecture kiln converts from GGUF.
inline constexpr std::string_view kGgufArchitecture = "llama";

// The tokenizer a GGUF file describes (tokenizer.ggml.*).
TokenizerData tokenizer_from_gguf(const GgufFile& gguf);

}  // namespace kiln
