// Pre-tokenizer splits: the regexes byte-level BPE models cut text with before merging, written by
// hand as the regex engine would match them (leftmost match, alternatives tried in order).
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

namespace kiln {

enum class PreTokenizer {
  Gpt2,    // GPT-2, GPT-J, GPT-NeoX, OPT: 's|'t|... | ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Llama3,  // Llama 3: case-insensitive contractions, \p{N}{1,3}, newline-aware whitespace
  Qwen2,   // Qwen2: as Llama 3 with single digits
  SmolLm,  // SmolLM2, StarCoder: every digit on its own, then the GPT-2 regex
  Bloom,   // BLOOM:  ?[^(\s|[.,!?…。，、।۔،])]+ with the gaps kept as pieces
};

// Maps a stored pre-tokenizer name (kiln's or GGUF's tokenizer.ggml.pre) to a split rule; throws a
// kiln::Error that lists the known names.
PreTokenizer pre_tokenizer_from_name(std::string_view name);

struct PieceSpan {
  size_t begin, end;  // byte offsets into the text
};

// Splits valid UTF-8 text into pieces that cover it in order. out is cleared first.
void pre_tokenize(PreTokenizer kind, std::string_view text, std::vector<PieceSpan>& out);

}  // namespace kiln
