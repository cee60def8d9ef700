#include "main/batch_requests.h"

#include "engine/error.h"

namespace kiln {

bool uses_chat_template(const BatchItem& item, const RequestDefaults& defaults) {
  return item.chat || (defaults.chat && !item.openai);  // an OpenAI completion is raw text by definition
}

BatchRequest make_request(const BatchItem& item, int64_t index, const RequestDefaults& defaults,
                          const Tokenizer& tokenizer, const ChatTemplate* tmpl) {
  BatchRequest request;
  request.index = index;
  request.max_tokens = item.max_tokens.value_or(defaults.max_tokens);
  request.stops = item.stops.value_or(defaults.stops);
  request.sampling = defaults.sampling;
  if (item.temperature) request.sampling.temperature = *item.temperature;
  if (item.top_p) request.sampling.top_p = *item.top_p;
  request.sampling.seed = item.seed ? *item.seed : defaults.sampling.seed + uint64_t(item.line - 1);
  request.sampling.validate();

  if (uses_chat_template(item, defaults)) {
    KILN_CHECK(tmpl != nullptr, "no chat template was loaded for line {}", item.line);
    std::vector<ChatMessage> messages = item.messages;
    if (!item.chat) {
      if (!defaults.system.empty()) messages.push_back({"system", defaults.system});
      messages.push_back({"user", item.prompt});
    }
    // The templates write BOS themselves where the model wants one; their special tokens are text.
    request.prompt = tokenizer.encode(render_chat(*tmpl, messages, true), false, true);
  } else {
    request.prompt = tokenizer.encode(item.prompt, defaults.add_bos, false);
  }
  return request;
}

}  // namespace kiln
