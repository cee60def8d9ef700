// From an input line to a scheduler request: the command's flags as defaults, the line's own fields
// over them, the chat template for messages, and the tokenizer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/batch_scheduler.h"
#include "main/batch_input.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

struct RequestDefaults {
  SamplerParams sampling;          // the seed of a line without one is this seed plus its line index
  int64_t max_tokens = -1;
  std::vector<std::string> stops;
  bool chat = false;               // wrap plain prompts in the chat template as a user turn
  std::string system;              // with chat: a system turn before it
  bool add_bos = true;             // for prompts that do not go through the template
};

// True when the item's prompt goes through the chat template.
[[nodiscard]] bool uses_chat_template(const BatchItem& item, const RequestDefaults& defaults);

// The request of a runnable item; index is the caller's. tmpl may be null when no item uses it.
// Throws kiln::Error when the template refuses the messages or a value is out of range.
[[nodiscard]] BatchRequest make_request(const BatchItem& item, int64_t index, const RequestDefaults& defaults,
                                        const Tokenizer& tokenizer, const ChatTemplate* tmpl);

}  // namespace kiln
