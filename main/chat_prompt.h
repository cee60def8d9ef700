// The tokens of a chat turn: the conversation rendered with the model's template, its oldest turns
// dropped until it and the room kept for the reply fit the context.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "main/chat_session.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

struct ChatPrompt {
  std::vector<int32_t> tokens;   // the whole prompt, ending with the assistant's turn opening
  size_t first_in_context = 0;   // the session's new first_in_context
  int64_t n_dropped_turns = 0;   // user/assistant pairs dropped by this call
  int64_t n_tokens_before = 0;   // the prompt's length before dropping (== tokens.size() when none)
};

// The session must end with a user message. Throws kiln::Error when even the system prompt and that
// message alone leave less than reply_room tokens of the context.
[[nodiscard]] ChatPrompt build_chat_prompt(const ChatSession& session, const ChatTemplate& tmpl,
                                           const Tokenizer& tokenizer, int64_t n_ctx, int64_t reply_room);

// Throws kiln::Error when the template cannot take this system prompt (Mistral has no system role).
void check_system_prompt(const ChatTemplate& tmpl, const std::string& system);

// The tokens kept free for a reply: max_tokens when it is set (at most half the context), else a
// quarter of the context, at most 512.
[[nodiscard]] int64_t reply_room(int64_t max_tokens, int64_t n_ctx);

}  // namespace kiln
