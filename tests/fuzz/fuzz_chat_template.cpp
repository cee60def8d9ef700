// Chat templates: detecting the family from a model's template text, rendering any conversation with
// every family, a saved conversation read back from JSON, and the chat prompt cut to fit a small
// context. Input: the template text, kSeparator, then a conversation as JSON ({"system": ..., "messages":
// [...]}) or, when that does not parse, as lines "role: content".
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "engine/error.h"
#include "main/chat_prompt.h"
#include "main/chat_session.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/tokenizer/tok_fixtures.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

constexpr std::string_view kSeparator = "\n=====\n";
constexpr const char* kFamilies[] = {"chatml", "llama2", "llama3", "zephyr", "mistral"};

const kiln::Tokenizer& tokenizer() {
  static const std::unique_ptr<kiln::Tokenizer> tok = kiln::make_tokenizer(kiln::test::smollm2_data());
  return *tok;
}

std::vector<kiln::ChatMessage> messages_from_lines(const std::string& text) {
  std::vector<kiln::ChatMessage> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    const size_t colon = line.find(": ");
    if (colon == std::string::npos) {
      out.push_back({"user", line});
    } else {
      out.push_back({line.substr(0, colon), line.substr(colon + 2)});
    }
    start = end + 1;
  }
  return out;
}

void render_everywhere(const kiln::ChatTemplate& tmpl, const std::vector<kiln::ChatMessage>& messages) {
  for (bool generation_prompt : {false, true}) {
    try {
      const std::string prompt = kiln::render_chat(tmpl, messages, generation_prompt);
      // ChatML writes every message verbatim.
      if (tmpl.family == kiln::ChatFamily::ChatMl)
        for (const auto& m : messages) KILN_FUZZ_ASSERT(prompt.find(m.content) != std::string::npos);
    } catch (const kiln::Error&) {
    }
  }
}

// A session round-trips through JSON, and its prompt fits the context it was cut for.
void check_session(const kiln::ChatSession& session, const kiln::ChatTemplate& tmpl) {
  const kiln::ChatSession again = kiln::session_from_json(kiln::session_to_json(session));
  KILN_FUZZ_ASSERT(again.system == session.system && again.messages.size() == session.messages.size());
  for (size_t i = 0; i < session.messages.size(); ++i)
    KILN_FUZZ_ASSERT(again.messages[i].role == session.messages[i].role &&
                     again.messages[i].content == session.messages[i].content);
  kiln::ChatSession asking = session;
  asking.messages.push_back({"user", "and now?"});
  for (int64_t n_ctx : {32, 256}) {
    try {
      const int64_t room = kiln::reply_room(-1, n_ctx);
      const kiln::ChatPrompt prompt = kiln::build_chat_prompt(asking, tmpl, tokenizer(), n_ctx, room);
      KILN_FUZZ_ASSERT(int64_t(prompt.tokens.size()) + room <= n_ctx);
      KILN_FUZZ_ASSERT(prompt.first_in_context % 2 == 0 && prompt.first_in_context < asking.messages.size());
    } catch (const kiln::Error&) {
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string> parts = kiln::fuzz::split_parts(data, size, kSeparator, 2);
  std::vector<kiln::ChatTemplate> templates;
  try {
    templates.push_back(kiln::detect_chat_template(parts[0]));
  } catch (const kiln::Error&) {
  }
  for (const char* name : kFamilies) templates.push_back(kiln::chat_template_by_name(name));

  const nlohmann::json json = nlohmann::json::parse(parts[1], nullptr, false);
  if (json.is_discarded()) {
    const std::vector<kiln::ChatMessage> messages = messages_from_lines(parts[1]);
    for (const auto& tmpl : templates) render_everywhere(tmpl, messages);
    return 0;
  }
  try {
    const kiln::ChatSession session = kiln::session_from_json(json);
    for (const auto& tmpl : templates) {
      render_everywhere(tmpl, session.for_model());
      try {
        if (!session.system.empty()) kiln::check_system_prompt(tmpl, session.system);
        check_session(session, tmpl);
      } catch (const kiln::Error&) {
      }
    }
  } catch (const kiln::Error&) {
  }
  return 0;
}
