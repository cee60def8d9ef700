// Hugging Face folder (config.json, safetensors, tokenizer files) -> Conversion. model_type llama, mistral,
// qwen2, gpt2, gptj, gpt_neox, bloom, opt and bert, each mapped by one function (convert/hf_mapping.h).
#pragma once

#include "convert/conversion.h"
#include "convert/hf_folder.h"

namespace kiln {

// The returned conversion reads tensors from `folder`, which must outlive it.
Conversion conversion_from_hf(const HfFolder& folder);

// "llama, mistral, ...": the config.json model_type values kiln converts.
std::string supported_hf_model_types();

// tokenizer.json (byte-level BPE or WordPiece), tokenizer.model (SentencePiece) or vocab.txt (WordPiece),
// plus tokenizer_config.json.
TokenizerData tokenizer_from_hf(const HfFolder& folder);

}  // namespace kiln
