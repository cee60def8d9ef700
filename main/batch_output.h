// The records kiln batch writes, one JSON line per input line: OpenAI batch output lines for OpenAI
// input, else {"id", "text", "prompt_tokens", "completion_tokens", "finish_reason"} (and "error").
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/generator.h"
#include "main/batch_input.h"

namespace kiln {

struct BatchOutcome {
  std::string text;
  int64_t n_prompt = 0;
  int64_t n_generated = 0;
  FinishReason finish = FinishReason::Length;
  std::string error;       // non-empty: the request failed
  std::string error_code;  // OpenAI-style code; "invalid_request" when empty
};

struct RecordContext {
  std::string model;     // the model's name in OpenAI bodies
  int64_t created = 0;   // Unix seconds
  std::string run_id;    // hex; with the line number it makes OpenAI's ids unique
};

// The record of one item, compact, without the newline. An item that could not be parsed gets its
// own error (with its line number), whatever outcome says.
[[nodiscard]] std::string format_record(BatchInputKind kind, const BatchItem& item, const BatchOutcome& outcome,
                                        const RecordContext& context);

// The id a record carries ("custom_id" for OpenAI records, else "id"); null when it has none.
[[nodiscard]] nlohmann::json record_id(BatchInputKind kind, const nlohmann::json& record);

}  // namespace kiln
