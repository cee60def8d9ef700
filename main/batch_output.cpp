#include "main/batch_output.h"

#include <fmt/format.h>

namespace kiln {
namespace {

using nlohmann::json;
using Record = nlohmann::ordered_json;  // fields in the order OpenAI writes them

std::string openai_finish_reason(FinishReason reason) {
  return reason == FinishReason::EndOfTurn || reason == FinishReason::StopString ? "stop" : "length";
}

Record openai_body(const BatchItem& item, const BatchOutcome& outcome, const RecordContext& context) {
  Record choice = {{"index", 0}};
  if (item.chat_endpoint) {
    choice["message"] = {{"role", "assistant"}, {"content", outcome.text}, {"refusal", nullptr}};
  } else {
    choice["text"] = outcome.text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = openai_finish_reason(outcome.finish);
  return {{"id", fmt::format("{}-{}-{}", item.chat_endpoint ? "chatcmpl" : "cmpl", context.run_id, item.line)},
          {"object", item.chat_endpoint ? "chat.completion" : "text_completion"},
          {"created", context.created},
          {"model", context.model},
          {"choices", Record::array({choice})},
          {"usage",
           {{"prompt_tokens", outcome.n_prompt},
            {"completion_tokens", outcome.n_generated},
            {"total_tokens", outcome.n_prompt + outcome.n_generated}}}};
}

Record openai_record(const BatchItem& item, const BatchOutcome& outcome, const std::string& error,
                   const std::string& code, const RecordContext& context) {
  Record record = {{"id", fmt::format("batch_req_{}_{}", context.run_id, item.line)}, {"custom_id", item.id}};
  if (!error.empty()) {
    record["response"] = nullptr;
    record["error"] = {{"code", code.empty() ? "invalid_request" : code}, {"message", error}};
    return record;
  }
  record["response"] = {{"status_code", 200},
                        {"request_id", fmt::format("req_{}_{}", context.run_id, item.line)},
                        {"body", openai_body(item, outcome, context)}};
  record["error"] = nullptr;
  return record;
}

Record plain_record(const BatchItem& item, const BatchOutcome& outcome, const std::string& error) {
  Record record = {{"id", item.id}};
  if (!error.empty()) {
    record.update({{"text", ""}, {"prompt_tokens", 0}, {"completion_tokens", 0}, {"finish_reason", "error"},
                   {"error", error}});
    return record;
  }
  record.update({{"text", outcome.text},
                 {"prompt_tokens", outcome.n_prompt},
                 {"completion_tokens", outcome.n_generated},
                 {"finish_reason", to_string(outcome.finish)}});
  return record;
}

}  // namespace

std::string format_record(BatchInputKind kind, const BatchItem& item, const BatchOutcome& outcome,
                          const RecordContext& context) {
  const bool parse_error = !item.runnable();
  const std::string error = parse_error ? fmt::format("line {}: {}", item.line, item.error) : outcome.error;
  const std::string& code = parse_error ? item.error_code : outcome.error_code;
  const Record record = kind == BatchInputKind::OpenAi ? openai_record(item, outcome, error, code, context)
                                                     : plain_record(item, outcome, error);
  // Generated text is valid UTF-8 (the stream decoder replaces bad bytes); replace guards the rest.
  return record.dump(-1, ' ', false, Record::error_handler_t::replace);
}

json record_id(BatchInputKind kind, const json& record) {
  const char* name = kind == BatchInputKind::OpenAi ? "custom_id" : "id";
  const auto it = record.find(name);
  return it == record.end() ? json() : *it;
}

}  // namespace kiln
