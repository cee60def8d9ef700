// A chat conversation: the system prompt and the user/assistant turns, saved to and loaded from JSON
// ({"system": "...", "messages": [{"role": "user", "content": "..."}, ...]}).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/chat_template.h"

namespace kiln {

struct ChatSession {
  std::string system;                 // "": none (the template's default system turn applies)
  std::vector<ChatMessage> messages;  // user, assistant, user, ...: alternating, starting with user
  size_t first_in_context = 0;        // messages before this were dropped to fit the context; even

  // The messages the model sees: the system prompt, then the turns still in the context.
  [[nodiscard]] std::vector<ChatMessage> for_model() const;
  // Forgets the turns; keeps the system prompt.
  void reset();
};

[[nodiscard]] nlohmann::json session_to_json(const ChatSession& session);
// Throws kiln::Error naming the first thing that is wrong; accepts a leading {"role": "system"} message
// in place of the "system" key.
[[nodiscard]] ChatSession session_from_json(const nlohmann::json& json);

// Writes through a temporary file, so a failed save leaves an existing file whole.
void save_session(const ChatSession& session, const std::string& path);
// Throws kiln::Error for an unreadable file, bad JSON or a bad conversation.
[[nodiscard]] ChatSession load_session(const std::string& path);

}  // namespace kiln
