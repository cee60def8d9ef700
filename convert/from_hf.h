// Hugging Face folder (config.json, safetensors, tokenizer files) -> Conversion.
// Supports model_type llama and mistral now; the rest of the families map through the same path.
#pragma once

#include "convert/conversion.h"
#include "convert/hf_folder.h"

namespace kiln {

// The returned conversion reads tensors from `folder`, which must outlive it.
Conversion conversion_from_hf(const HfFolder& folder);

// tokenizer.json (byte-level BPE) or tokenizer.model (SentencePiece), plus tokenizer_config.json.
TokenizerData tokenizer_from_hf(const HfFolder& folder);

}  // namespace kiln
