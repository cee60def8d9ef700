// Chat prompts for the supported families, rendered exactly as the models' Jinja templates render
// them, without a Jinja engine: the template text only selects the family (and ChatML's default
// system message).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kiln {

enum class ChatFamily { ChatMl, Llama2, Llama3, Zephyr, Mistral };

struct ChatTemplate {
  ChatFamily family = ChatFamily::ChatMl;
  std::string name;            // "chatml", "llama2", "llama3", "zephyr", "mistral"
  std::string default_system;  // ChatML: the system turn added when the first message is not one
  std::string bos_token;       // the text of the model's BOS and EOS tokens, as the template uses them
  std::string eos_token;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

// The family a model's template string belongs to; throws a kiln::Error naming the choices when it
// matches none (or is empty). bos/eos get the family's usual token text; callers with a tokenizer
// should overwrite them with the model's.
[[nodiscard]] ChatTemplate detect_chat_template(std::string_view template_text);

// The family by name (chatml, llama2, llama3, zephyr, mistral), for --chat-template.
[[nodiscard]] ChatTemplate chat_template_by_name(std::string_view name);

// The prompt text. Throws kiln::Error where the model's template raises (Llama 2 and Mistral need
// alternating user/assistant turns; Mistral has no system role).
[[nodiscard]] std::string render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                                      bool add_generation_prompt);

}  // namespace kiln
