// One chat input assembled from lines: a line, lines joined by a trailing backslash, or a block
// between two """ lines (the quotes may share a line with the text).
#pragma once

#include <string>

#include "main/line_reader.h"

namespace kiln {

struct ChatInput {
  ReadStatus status = ReadStatus::End;  // Line: text holds the input
  std::string text;                     // lines joined by "\n", surrounding whitespace trimmed
  bool block = false;                   // from a """ block: text, never a command
  bool unterminated = false;            // the input ended inside a block or after a trailing backslash
};

// Blank lines are skipped. more_prompt is shown for the lines after the first.
[[nodiscard]] ChatInput read_chat_input(LineReader& reader, const std::string& prompt, const std::string& more_prompt);

}  // namespace kiln
