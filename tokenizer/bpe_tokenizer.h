// Byte-level BPE (GPT-2 family): bytes map to printable characters, the pre-tokenizer cuts the text
// into pieces, and each piece is merged by merge rank with a priority queue.
#pragma once

#include <memory>

#include "tokenizer/tokenizer.h"

namespace kiln {

[[nodiscard]] std::unique_ptr<Tokenizer> make_bpe_tokenizer(const TokenizerData& data);

// The GPT-2 byte-to-character map: byte b stands for the code point byte_to_unicode(b).
uint32_t byte_to_unicode(uint8_t b);

}  // namespace kiln
