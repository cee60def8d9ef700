// The input of kiln batch: one request per line, in one of three kinds detected per file. Every line
// becomes an item, so that every line gets exactly one output record; a line that cannot run carries
// the reason instead of a request.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/chat_template.h"

namespace kiln {

enum class BatchInputKind {
  PlainText,  // one prompt per line; the id is the line number
  Shorthand,  // {"id", "prompt" | "messages", "max_tokens", "temperature", "top_p", "seed", "stop"}
  OpenAi,     // OpenAI batch lines: {"custom_id", "method", "url", "body"}
};
std::string_view to_string(BatchInputKind kind);

struct BatchItem {
  int64_t line = 0;                  // 1-based
  nlohmann::json id;                 // null when the line has none that can be read
  std::string error;                 // non-empty: the line cannot run
  std::string error_code;            // OpenAI-style code for the error record ("invalid_request", ...)
  bool chat = false;                 // messages (through the chat template) rather than prompt
  bool openai = false;               // an OpenAI batch line
  bool chat_endpoint = false;        // OpenAI: /v1/chat/completions (else /v1/completions)
  std::string prompt;
  std::vector<ChatMessage> messages;
  std::optional<int64_t> max_tokens;  // -1: no limit
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<uint64_t> seed;
  std::optional<std::vector<std::string>> stops;

  bool runnable() const { return error.empty(); }
};

struct BatchInput {
  BatchInputKind kind = BatchInputKind::PlainText;
  std::vector<BatchItem> items;  // one per line, in line order
};

// The kind of a file: JSON lines when its first non-blank line is a JSON object, OpenAI's when that
// object has "custom_id", else plain text.
[[nodiscard]] BatchInputKind detect_batch_kind(std::string_view text);

// Splits text into lines ("\n", an optional "\r" before it; no line after a final newline) and parses
// each. Duplicate ids make every line that carries them an error.
[[nodiscard]] BatchInput parse_batch_input(std::string_view text);

// The key that identifies an id in maps and in OUT on resume (3 and "3" differ).
[[nodiscard]] std::string id_key(const nlohmann::json& id);

}  // namespace kiln
