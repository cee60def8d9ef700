#include "main/batch_input.h"

#include <algorithm>
#include <limits>
#include <map>

#include "engine/error.h"
#include "engine/json_input.h"

namespace kiln {
namespace {

using nlohmann::json;

std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    const size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    if (end == std::string_view::npos) break;
    text.remove_prefix(end + 1);
  }
  return lines;
}

std::string_view without_bom(std::string_view text) {
  return text.substr(0, 3) == "\xEF\xBB\xBF" ? text.substr(3) : text;  // a UTF-8 byte order mark
}

bool blank(std::string_view line) {
  return line.find_first_not_of(" \t\r\f\v") == std::string_view::npos;
}

// The line as a JSON object, or nullopt with the reason in *why.
std::optional<json> parse_object(std::string_view line, std::string* why) {
  try {
    json value = parse_json_input(line, "the line");
    if (value.is_object()) return value;
    *why = "the line is JSON but not an object";
  } catch (const Error& e) {
    *why = e.what();
  }
  return std::nullopt;
}

std::string text_of(const json& content) {
  if (content.is_string()) return content.get<std::string>();
  KILN_CHECK(content.is_array(), "a message's content must be a string or an array of text parts");
  std::string text;
  for (const json& part : content) {
    KILN_CHECK(part.is_object() && part.value("type", "") == "text" && part.contains("text") &&
                   part["text"].is_string(),
               "only text content parts ({{\"type\": \"text\", \"text\": ...}}) are supported");
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<ChatMessage> read_messages(const json& messages) {
  KILN_CHECK(messages.is_array() && !messages.empty(), "\"messages\" must be a non-empty array");
  std::vector<ChatMessage> out;
  for (const json& m : messages) {
    KILN_CHECK(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content"),
               "each message needs a \"role\" and a \"content\"");
    std::string role = m["role"].get<std::string>();
    if (role == "developer") role = "system";  // OpenAI's newer name for the system role
    KILN_CHECK(role == "system" || role == "user" || role == "assistant",
               "message role '{}' is not system, user or assistant", role);
    out.push_back({role, text_of(m["content"])});
  }
  return out;
}

// The request fields the two JSON kinds share. max_tokens_keys: the names a token limit may have.
void read_request_fields(const json& obj, std::initializer_list<const char*> max_tokens_keys, BatchItem& item) {
  for (const char* key : max_tokens_keys)
    if (auto it = obj.find(key); it != obj.end()) {
      if (it->is_null()) {
        item.max_tokens = -1;
        continue;
      }
      item.max_tokens = json_integer(*it, -1, int64_t(1) << 40, fmt::format("\"{}\" (-1: no limit)", key));
    }
  if (auto it = obj.find("temperature"); it != obj.end() && !it->is_null())
    item.temperature = json_float(*it, "\"temperature\"");
  if (auto it = obj.find("top_p"); it != obj.end() && !it->is_null()) item.top_p = json_float(*it, "\"top_p\"");
  if (auto it = obj.find("seed"); it != obj.end() && !it->is_null())
    item.seed = uint64_t(json_integer(*it, 0, std::numeric_limits<int64_t>::max(), "\"seed\""));
  if (auto it = obj.find("stop"); it != obj.end() && !it->is_null()) {
    std::vector<std::string> stops;
    if (it->is_string()) {
      stops.push_back(it->get<std::string>());
    } else {
      KILN_CHECK(it->is_array(), "\"stop\" must be a string or an array of strings");
      for (const json& s : *it) {
        KILN_CHECK(s.is_string(), "\"stop\" must be a string or an array of strings");
        stops.push_back(s.get<std::string>());
      }
    }
    item.stops = std::move(stops);
  }
}

void read_shorthand(const json& obj, BatchItem& item) {
  static const char* const known[] = {"id", "prompt", "messages", "max_tokens", "temperature", "top_p", "seed", "stop"};
  for (const auto& [key, value] : obj.items())
    KILN_CHECK(std::find(std::begin(known), std::end(known), key) != std::end(known),
               "unknown field \"{}\" (known: id, prompt, messages, max_tokens, temperature, top_p, seed, stop)", key);
  KILN_CHECK(obj.contains("prompt") != obj.contains("messages"), "give either \"prompt\" or \"messages\" (one of them)");
  if (obj.contains("prompt")) {
    KILN_CHECK(obj["prompt"].is_string(), "\"prompt\" must be a string");
    item.prompt = obj["prompt"].get<std::string>();
  } else {
    item.chat = true;
    item.messages = read_messages(obj["messages"]);
  }
  read_request_fields(obj, {"max_tokens"}, item);
}

void read_openai(const json& obj, BatchItem& item) {
  KILN_CHECK(obj.value("method", "") == "POST", "\"method\" must be \"POST\"");
  const std::string url = obj.value("url", "");
  KILN_CHECK(url == "/v1/chat/completions" || url == "/v1/completions",
             "\"url\" '{}' is not /v1/chat/completions or /v1/completions", url);
  KILN_CHECK(obj.contains("body") && obj["body"].is_object(), "\"body\" must be an object");
  const json& body = obj["body"];
  item.chat_endpoint = url == "/v1/chat/completions";
  if (item.chat_endpoint) {
    KILN_CHECK(body.contains("messages"), "a chat completion's body needs \"messages\"");
    item.chat = true;
    item.messages = read_messages(body["messages"]);
  } else {
    KILN_CHECK(body.contains("prompt"), "a completion's body needs \"prompt\"");
    const json& prompt = body["prompt"];
    const bool one_string = prompt.is_array() && prompt.size() == 1 && prompt[0].is_string();
    KILN_CHECK(prompt.is_string() || one_string, "\"prompt\" must be a string (one prompt per line)");
    item.prompt = (one_string ? prompt[0] : prompt).get<std::string>();
  }
  if (auto it = body.find("n"); it != body.end() && !it->is_null())
    KILN_CHECK(json_integer(*it, 1, 1, "\"n\"") == 1, "\"n\" must be 1: give each completion its own line");
  KILN_CHECK(!body.value("stream", false), "\"stream\" is not available in a batch");
  read_request_fields(body, {"max_tokens", "max_completion_tokens"}, item);
}

BatchItem parse_line(BatchInputKind kind, std::string_view line, int64_t number) {
  BatchItem item;
  item.line = number;
  item.openai = kind == BatchInputKind::OpenAi;
  if (kind == BatchInputKind::PlainText) {
    item.id = number;
    item.prompt = std::string(line);
    if (blank(line)) {
      item.error = "the line is empty: give a prompt";
      item.error_code = "invalid_request";
    }
    return item;
  }
  std::string why;
  const std::optional<json> obj = parse_object(line, &why);
  if (!obj) {
    item.error = blank(line) ? "the line is empty: give a JSON object" : why;
    item.error_code = "invalid_json";
    return item;
  }
  const char* id_name = item.openai ? "custom_id" : "id";
  try {
    const auto id = obj->find(id_name);
    KILN_CHECK(id != obj->end(), "the line has no \"{}\"", id_name);
    const bool ok = kind == BatchInputKind::OpenAi ? id->is_string() && !id->get<std::string>().empty()
                                                   : (id->is_string() || id->is_number_integer());
    KILN_CHECK(ok, "\"{}\" must be {}", id_name, kind == BatchInputKind::OpenAi ? "a non-empty string" : "a string or an integer");
    item.id = *id;
    if (kind == BatchInputKind::OpenAi) {
      read_openai(*obj, item);
    } else {
      read_shorthand(*obj, item);
    }
  } catch (const Error& e) {
    item.error = e.what();
    item.error_code = "invalid_request";
  } catch (const json::exception& e) {  // a field of the wrong type, read through value()
    item.error = fmt::format("a field has the wrong type ({})", e.what());
    item.error_code = "invalid_request";
  }
  return item;
}

void mark_duplicates(std::vector<BatchItem>& items) {
  std::map<std::string, std::vector<size_t>> lines_by_id;
  for (size_t i = 0; i < items.size(); ++i)
    if (!items[i].id.is_null()) lines_by_id[id_key(items[i].id)].push_back(i);
  for (const auto& [key, at] : lines_by_id) {
    if (at.size() < 2) continue;
    std::string lines;
    for (size_t i : at) lines += (lines.empty() ? "" : ", ") + std::to_string(items[i].line);
    for (size_t i : at) {
      items[i].error = fmt::format("the id {} is on lines {}: give every line its own id", key, lines);
      items[i].error_code = "duplicate_id";
    }
  }
}

}  // namespace

std::string_view to_string(BatchInputKind kind) {
  switch (kind) {
    case BatchInputKind::PlainText: return "plain text";
    case BatchInputKind::Shorthand: return "JSON lines";
    case BatchInputKind::OpenAi: return "OpenAI batch";
  }
  return "?";
}

BatchInputKind detect_batch_kind(std::string_view text) {
  text = without_bom(text);
  for (std::string_view line : split_lines(text)) {
    if (blank(line)) continue;
    std::string why;
    const std::optional<json> obj = parse_object(line, &why);
    if (!obj) return BatchInputKind::PlainText;
    return obj->contains("custom_id") ? BatchInputKind::OpenAi : BatchInputKind::Shorthand;
  }
  return BatchInputKind::PlainText;
}

BatchInput parse_batch_input(std::string_view text) {
  text = without_bom(text);
  BatchInput input;
  input.kind = detect_batch_kind(text);
  int64_t number = 0;
  for (std::string_view line : split_lines(text)) input.items.push_back(parse_line(input.kind, line, ++number));
  mark_duplicates(input.items);
  return input;
}

std::string id_key(const nlohmann::json& id) { return id.dump(); }

}  // namespace kiln
