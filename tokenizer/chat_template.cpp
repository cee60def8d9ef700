#include "tokenizer/chat_template.h"

#include "engine/error.h"
#include "tokenizer/utf8.h"

namespace kiln {

namespace {

constexpr std::string_view kChoices = "chatml, llama2, llama3, zephyr, mistral";

// Python's str.isspace() for the characters Jinja's trim and strip() remove.
bool py_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// str.strip(): leading and trailing whitespace off.
std::string py_strip(std::string_view s) {
  size_t begin = 0, end = 0, pos = 0;
  bool seen = false;
  while (pos < s.size()) {
    const Utf8Char c = utf8_decode(s, pos);
    const bool space = c.status == Utf8Status::Ok && py_space(c.code_point);
    if (!space) {
      if (!seen) begin = pos;
      seen = true;
      end = pos + c.length;
    }
    pos += c.length;
  }
  return seen ? std::string(s.substr(begin, end - begin)) : std::string();
}

// The Jinja string literal body starting at text[pos], unescaped; stops at the closing quote or after
// max_bytes (a template is text from the model file: its scans must stay bounded).
std::string jinja_literal(std::string_view text, size_t pos, char quote, size_t max_bytes) {
  std::string out;
  for (; pos < text.size() && text[pos] != quote && out.size() < max_bytes; ++pos) {
    if (text[pos] == '\\' && pos + 1 < text.size()) {
      const char e = text[++pos];
      out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
    } else {
      out += text[pos];
    }
  }
  return out;
}

// ChatML templates that add a system turn when none is given (SmolLM2, Qwen2) write it as one
// literal: '<|im_start|>system\n...<|im_end|>\n'. The turn built from the user's system message
// never is one literal (it joins message['content']). Returns the message, or "" when there is none.
std::string chatml_default_system(std::string_view text) {
  constexpr std::string_view kOpen = "<|im_start|>system";
  // Real templates hold one or two such literals; looking at a few, each read up to 64 KB, keeps a
  // hostile template with thousands of them from taking quadratic time.
  constexpr int kMaxLiterals = 16;
  constexpr size_t kMaxLiteralBytes = size_t(64) << 10;
  int n_literals = 0;
  for (size_t at = text.find(kOpen); at != std::string_view::npos && n_literals < kMaxLiterals;
       at = text.find(kOpen, at + 1)) {
    if (at == 0 || (text[at - 1] != '\'' && text[at - 1] != '"')) continue;
    ++n_literals;
    const std::string body = jinja_literal(text, at, text[at - 1], kMaxLiteralBytes);
    constexpr std::string_view kHead = "<|im_start|>system\n", kEnd = "<|im_end|>";
    const size_t end = body.find(kEnd);
    if (body.starts_with(kHead) && end != std::string::npos) return body.substr(kHead.size(), end - kHead.size());
  }
  return {};
}

void check_alternating(const std::vector<ChatMessage>& turns) {
  for (size_t i = 0; i < turns.size(); ++i) {
    KILN_CHECK((turns[i].role == "user") == (i % 2 == 0),
               "Conversation roles must alternate user/assistant/user/assistant/... (message {} is '{}')", i + 1,
               turns[i].role);
  }
}

std::string render_chatml(const ChatTemplate& t, const std::vector<ChatMessage>& messages, bool gen) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0 && messages[0].role != "system" && !t.default_system.empty()) {
      out += "<|im_start|>system\n" + t.default_system + "<|im_end|>\n";
    }
    out += "<|im_start|>" + messages[i].role + "\n" + messages[i].content + "<|im_end|>\n";
  }
  if (gen) out += "<|im_start|>assistant\n";
  return out;
}

// [INST] turns with the system message folded into the first one; the generation prompt is implicit.
std::string render_llama2(const ChatTemplate& t, const std::vector<ChatMessage>& messages) {
  const bool has_system = !messages.empty() && messages[0].role == "system";
  const std::vector<ChatMessage> turns(messages.begin() + (has_system ? 1 : 0), messages.end());
  check_alternating(turns);
  std::string out;
  for (size_t i = 0; i < turns.size(); ++i) {
    std::string content = turns[i].content;
    if (i == 0 && has_system) content = "<<SYS>>\n" + messages[0].content + "\n<</SYS>>\n\n" + content;
    if (turns[i].role == "user") {
      out += t.bos_token + "[INST] " + py_strip(content) + " [/INST]";
    } else if (turns[i].role == "assistant") {
      // Appended piece by piece: gcc 12 warns falsely on " " + std::string&&.
      out += ' ';
      out += py_strip(content);
      out += ' ';
      out += t.eos_token;
    }
  }
  return out;
}

std::string render_llama3(const ChatTemplate& t, const std::vector<ChatMessage>& messages, bool gen) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) out += t.bos_token;
    out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n" + py_strip(messages[i].content) +
           "<|eot_id|>";
  }
  if (gen) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string render_zephyr(const ChatTemplate& t, const std::vector<ChatMessage>& messages, bool gen) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role == "user" || role == "system" || role == "assistant") {
      out += "<|" + role + "|>\n" + messages[i].content + t.eos_token + "\n";
    }
    if (i + 1 == messages.size() && gen) out += "<|assistant|>\n";
  }
  return out;
}

std::string render_mistral(const ChatTemplate& t, const std::vector<ChatMessage>& messages) {
  check_alternating(messages);
  std::string out = t.bos_token;
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      out += "[INST] " + m.content + " [/INST]";
    } else if (m.role == "assistant") {
      out += m.content + t.eos_token;
    } else {
      fail("Only user and assistant roles are supported! (got '{}')", m.role);
    }
  }
  return out;
}

}  // namespace

ChatTemplate chat_template_by_name(std::string_view name) {
  ChatTemplate t;
  t.name = std::string(name);
  if (name == "chatml") {
    t.family = ChatFamily::ChatMl;
    t.bos_token = "<|im_start|>";
    t.eos_token = "<|im_end|>";
  } else if (name == "llama2") {
    t.family = ChatFamily::Llama2;
    t.bos_token = "<s>";
    t.eos_token = "</s>";
  } else if (name == "llama3") {
    t.family = ChatFamily::Llama3;
    t.bos_token = "<|begin_of_text|>";
    t.eos_token = "<|eot_id|>";
  } else if (name == "zephyr") {
    t.family = ChatFamily::Zephyr;
    t.bos_token = "<s>";
    t.eos_token = "</s>";
  } else if (name == "mistral") {
    t.family = ChatFamily::Mistral;
    t.bos_token = "<s>";
    t.eos_token = "</s>";
  } else {
    fail("unknown chat template '{}': choose one of {}", name, kChoices);
  }
  return t;
}

ChatTemplate detect_chat_template(std::string_view text) {
  auto has = [&](std::string_view s) { return text.find(s) != std::string_view::npos; };
  KILN_CHECK(!text.empty(), "the model has no chat template: pass --chat-template NAME, one of {}", kChoices);
  if (has("<|im_start|>")) {
    ChatTemplate t = chat_template_by_name("chatml");
    t.default_system = chatml_default_system(text);
    return t;
  }
  if (has("<|start_header_id|>") && has("<|eot_id|>")) return chat_template_by_name("llama3");
  if (has("[INST]") && has("<<SYS>>")) return chat_template_by_name("llama2");
  if (has("[INST]")) return chat_template_by_name("mistral");
  if (has("<|user|>") && has("<|assistant|>")) return chat_template_by_name("zephyr");
  fail("the model's chat template matches none that kiln knows: pass --chat-template NAME, one of {}", kChoices);
}

std::string render_chat(const ChatTemplate& t, const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  switch (t.family) {
    case ChatFamily::ChatMl:
      return render_chatml(t, messages, add_generation_prompt);
    case ChatFamily::Llama2:
      return render_llama2(t, messages);
    case ChatFamily::Llama3:
      return render_llama3(t, messages, add_generation_prompt);
    case ChatFamily::Zephyr:
      return render_zephyr(t, messages, add_generation_prompt);
    case ChatFamily::Mistral:
      return render_mistral(t, messages);
  }
  fail("unknown chat family");
}

}  // namespace kiln
