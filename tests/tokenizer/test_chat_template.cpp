// Chat prompts against transformers' apply_chat_template on the real templates
// (tests/data/chat_templates.json from gen_chat_fixtures.py).
#include <gtest/gtest.h>

#include "engine/error.h"
#include "tests/tokenizer/tok_fixtures.h"
#include "tokenizer/chat_template.h"

namespace kiln {
namespace {

TEST(ChatTemplate, DetectsEachFamilyFromItsTemplate) {
  const auto fixture = test::read_json("chat_templates.json");
  for (const auto& t : fixture.at("templates")) {
    const ChatTemplate tmpl = detect_chat_template(t.at("template").get<std::string>());
    EXPECT_EQ(tmpl.name, t.at("family").get<std::string>()) << t.at("name");
  }
  EXPECT_EQ(detect_chat_template(test::smollm2_data().chat_template).default_system,
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
}

TEST(ChatTemplate, RendersLikeTransformers) {
  const auto fixture = test::read_json("chat_templates.json");
  std::map<std::string, ChatTemplate> templates;
  for (const auto& t : fixture.at("templates")) {
    ChatTemplate tmpl = detect_chat_template(t.at("template").get<std::string>());
    tmpl.bos_token = t.at("bos_token").get<std::string>();
    tmpl.eos_token = t.at("eos_token").get<std::string>();
    templates[t.at("name").get<std::string>()] = tmpl;
  }
  int checked = 0;
  for (const auto& c : fixture.at("cases")) {
    std::vector<ChatMessage> messages;
    for (const auto& m : fixture.at("conversations").at(c.at("conversation").get<std::string>())) {
      messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
    }
    const ChatTemplate& tmpl = templates.at(c.at("template").get<std::string>());
    const bool gen = c.at("add_generation_prompt").get<bool>();
    const std::string label = c.at("template").get<std::string>() + "/" + c.at("conversation").get<std::string>() +
                              (gen ? "/gen" : "");
    if (c.contains("error")) {
      EXPECT_THROW((void)render_chat(tmpl, messages, gen), Error) << label;
    } else {
      EXPECT_EQ(render_chat(tmpl, messages, gen), c.at("expected").get<std::string>()) << label;
    }
    ++checked;
  }
  EXPECT_GE(checked, 100);
}

TEST(ChatTemplate, UnknownTemplatesNameTheChoices) {
  for (const std::string& text : {std::string(), std::string("{{ messages[0]['content'] }}")}) {
    try {
      (void)detect_chat_template(text);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      const std::string message = e.what();
      for (const char* name : {"chatml", "llama2", "llama3", "zephyr", "mistral", "--chat-template"}) {
        EXPECT_NE(message.find(name), std::string::npos) << message;
      }
    }
  }
  EXPECT_THROW((void)chat_template_by_name("vicuna"), Error);
  EXPECT_EQ(chat_template_by_name("llama3").family, ChatFamily::Llama3);
  EXPECT_EQ(chat_template_by_name("chatml").default_system, "");
}

}  // namespace
}  // namespace kiln
