#include "main/chat_session.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <system_error>

#include "engine/error.h"
#include "engine/json_input.h"

namespace kiln {
namespace {

// A conversation file is text a person could have typed; anything larger is not one.
constexpr uintmax_t kMaxSessionBytes = uintmax_t(64) << 20;

std::string string_field(const nlohmann::json& object, const char* key, const std::string& where) {
  const auto it = object.find(key);
  KILN_CHECK(it != object.end(), "{} has no \"{}\"", where, key);
  KILN_CHECK(it->is_string(), "{}: \"{}\" must be a string, not {}", where, key, it->type_name());
  return it->get<std::string>();
}

}  // namespace

std::vector<ChatMessage> ChatSession::for_model() const {
  std::vector<ChatMessage> out;
  if (!system.empty()) out.push_back({"system", system});
  for (size_t i = first_in_context; i < messages.size(); ++i) out.push_back(messages[i]);
  return out;
}

void ChatSession::reset() {
  messages.clear();
  first_in_context = 0;
}

nlohmann::json session_to_json(const ChatSession& session) {
  nlohmann::json messages = nlohmann::json::array();
  for (const ChatMessage& m : session.messages) messages.push_back({{"role", m.role}, {"content", m.content}});
  return {{"system", session.system}, {"messages", messages}};
}

ChatSession session_from_json(const nlohmann::json& json) {
  KILN_CHECK(json.is_object(), "the conversation must be a JSON object with \"messages\", not {}", json.type_name());
  const auto messages = json.find("messages");
  KILN_CHECK(messages != json.end(), "the conversation has no \"messages\" array");
  KILN_CHECK(messages->is_array(), "\"messages\" must be an array, not {}", messages->type_name());

  ChatSession session;
  if (const auto system = json.find("system"); system != json.end() && !system->is_null()) {
    KILN_CHECK(system->is_string(), "\"system\" must be a string, not {}", system->type_name());
    session.system = system->get<std::string>();
  }
  for (size_t i = 0; i < messages->size(); ++i) {
    const nlohmann::json& m = (*messages)[i];
    const std::string where = fmt::format("message {}", i + 1);
    KILN_CHECK(m.is_object(), "{} must be an object with \"role\" and \"content\", not {}", where, m.type_name());
    ChatMessage message{string_field(m, "role", where), string_field(m, "content", where)};
    if (i == 0 && message.role == "system" && !json.contains("system")) {
      session.system = message.content;
      continue;
    }
    const char* expected = session.messages.size() % 2 == 0 ? "user" : "assistant";
    KILN_CHECK(message.role == expected,
               "{} has role \"{}\" but \"{}\" was expected: the turns alternate user, assistant, user, ...", where,
               message.role, expected);
    session.messages.push_back(std::move(message));
  }
  KILN_CHECK(session.messages.size() % 2 == 0, "the conversation ends with a user message: it must end with a reply");
  return session;
}

void save_session(const ChatSession& session, const std::string& path) {
  KILN_CHECK(!path.empty(), "give the file to save to: /save FILE");
  // Text from a terminal can hold invalid UTF-8: write it replaced rather than fail.
  const std::string text = session_to_json(session).dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    KILN_CHECK(out.good(), "cannot write '{}': check the folder exists and is writable", path);
    out << text << '\n';
    out.close();
    if (!out) {
      std::remove(temporary.c_str());
      fail("cannot write '{}': is the disk full?", path);
    }
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::remove(temporary.c_str());
    fail("cannot save to '{}': {}", path, error.message());
  }
}

ChatSession load_session(const std::string& path) {
  KILN_CHECK(!path.empty(), "give the file to load: /load FILE");
  std::error_code error;
  KILN_CHECK(std::filesystem::exists(path, error), "cannot open '{}': no such file", path);
  KILN_CHECK(std::filesystem::is_regular_file(path, error), "cannot open '{}': it is not a file", path);
  const uintmax_t size = std::filesystem::file_size(path, error);
  KILN_CHECK(!error && size <= kMaxSessionBytes, "'{}' is too large ({} bytes) to be a saved conversation", path,
             size);
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in.good(), "cannot open '{}': check it is readable", path);
  const std::string text{std::istreambuf_iterator<char>(in), {}};
  const nlohmann::json json = parse_json_input(text, fmt::format("'{}'", path));
  try {
    return session_from_json(json);
  } catch (const Error& e) {
    fail("'{}' is not a saved conversation: {}", path, e.what());
  }
}

}  // namespace kiln
