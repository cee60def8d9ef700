// UTF-8 helpers for the tokenizer: decoding one character with the "maximal subpart" rule for bad
// input (the rule Python's and Rust's lossy decoders follow), so kiln replaces invalid bytes with
// U+FFFD exactly where the reference tokenizers do.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kiln {

enum class Utf8Status { Ok, Invalid, Truncated };

struct Utf8Char {
  Utf8Status status;
  uint32_t code_point;  // valid only when status == Ok
  size_t length;        // bytes consumed: the character, or the maximal invalid subpart (>= 1)
};

// Decodes the character starting at text[pos] (pos < text.size()). Truncated: a valid prefix that
// runs into the end of text (a later byte could complete it).
Utf8Char utf8_decode(std::string_view text, size_t pos);

// Appends the UTF-8 encoding of a valid scalar value.
void utf8_append(std::string& out, uint32_t code_point);

// text with every invalid or truncated sequence replaced by U+FFFD.
std::string utf8_sanitize(std::string_view text);

bool utf8_is_valid(std::string_view text);

}  // namespace kiln
