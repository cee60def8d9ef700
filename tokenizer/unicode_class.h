// The character classes the pre-tokenizer regexes use: \p{L}, \p{N} and \s (White_Space), from
// Unicode 16.0 as the reference regex engine has them (table: scripts/gen-tok-unicode-tables.py).
#pragma once

#include <cstdint>

namespace kiln {

enum UnicodeClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 4 };

UnicodeClass unicode_class(uint32_t code_point);

}  // namespace kiln
