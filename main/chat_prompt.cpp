#include "main/chat_prompt.h"

#include <algorithm>

#include "engine/error.h"

namespace kiln {
namespace {

std::vector<int32_t> encode_turns(const ChatSession& session, size_t first, const ChatTemplate& tmpl,
                                  const Tokenizer& tokenizer) {
  ChatSession window = session;
  window.first_in_context = first;
  // The templates write BOS themselves where the model wants one; their special tokens are text.
  return tokenizer.encode(render_chat(tmpl, window.for_model(), true), false, true);
}

}  // namespace

void check_system_prompt(const ChatTemplate& tmpl, const std::string& system) {
  try {
    (void)render_chat(tmpl, {{"system", system}, {"user", "hello"}}, true);
  } catch (const Error& e) {
    fail("the {} chat template takes no system prompt ({}): leave it out or choose another --chat-template",
         tmpl.name, e.what());
  }
}

int64_t reply_room(int64_t max_tokens, int64_t n_ctx) {
  if (max_tokens >= 0) return std::min(max_tokens, n_ctx / 2);
  return std::min<int64_t>(512, n_ctx / 4);
}

ChatPrompt build_chat_prompt(const ChatSession& session, const ChatTemplate& tmpl, const Tokenizer& tokenizer,
                             int64_t n_ctx, int64_t reply_room) {
  KILN_CHECK(!session.messages.empty() && session.messages.back().role == "user",
             "there is no user message to answer");
  ChatPrompt prompt;
  prompt.first_in_context = session.first_in_context;
  prompt.tokens = encode_turns(session, prompt.first_in_context, tmpl, tokenizer);
  prompt.n_tokens_before = int64_t(prompt.tokens.size());
  auto fits = [&] { return int64_t(prompt.tokens.size()) + reply_room <= n_ctx; };
  // Drop whole user/assistant pairs, oldest first, so the turns still alternate.
  while (!fits() && prompt.first_in_context + 2 < session.messages.size()) {
    prompt.first_in_context += 2;
    ++prompt.n_dropped_turns;
    prompt.tokens = encode_turns(session, prompt.first_in_context, tmpl, tokenizer);
  }
  KILN_CHECK(fits(),
             "this message needs {} tokens{} and {} more are kept for the reply, but the context holds {}: "
             "shorten it, lower -n or raise -c",
             prompt.tokens.size(), session.system.empty() ? "" : " with the system prompt", reply_room, n_ctx);
  return prompt;
}

}  // namespace kiln
