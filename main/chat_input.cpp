#include "main/chat_input.h"

#include <string_view>

namespace kiln {
namespace {

constexpr std::string_view kQuotes = R"(""")";
constexpr std::string_view kSpace = " \t\r\n";

std::string_view trim(std::string_view s) {
  const size_t begin = s.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(kSpace) - begin + 1);
}

// Lines up to the closing """; first is the text after the opening quotes.
ChatInput read_block(LineReader& reader, std::string_view first, const std::string& more_prompt) {
  ChatInput input{ReadStatus::Line, "", true, false};
  std::string text(first);
  bool closed = trim(first).ends_with(kQuotes);
  std::string line;
  while (!closed) {
    const ReadStatus status = reader.read_line(more_prompt, line);
    if (status == ReadStatus::Interrupted) return {ReadStatus::Interrupted};
    if (status == ReadStatus::End) {
      input.unterminated = true;
      break;
    }
    closed = trim(line).ends_with(kQuotes);
    text += '\n';
    text += line;
  }
  std::string_view body = trim(text);
  if (closed) body.remove_suffix(kQuotes.size());
  input.text = std::string(trim(body));
  return input;
}

// True for a line ending with a backslash (spaces after it allowed), which it then loses.
bool continues(std::string& line) {
  const size_t last = line.find_last_not_of(" \t");
  if (last == std::string::npos || line[last] != '\\') return false;
  line.erase(last);
  return true;
}

}  // namespace

ChatInput read_chat_input(LineReader& reader, const std::string& prompt, const std::string& more_prompt) {
  std::string line;
  ReadStatus status;
  while ((status = reader.read_line(prompt, line)) == ReadStatus::Line && trim(line).empty()) {
  }
  if (status != ReadStatus::Line) return {status};

  const std::string_view first = trim(line);
  if (first.starts_with(kQuotes)) return read_block(reader, first.substr(kQuotes.size()), more_prompt);

  ChatInput input{ReadStatus::Line};
  std::string text;
  while (continues(line)) {
    text += line;
    text += '\n';
    status = reader.read_line(more_prompt, line);
    if (status == ReadStatus::Interrupted) return {ReadStatus::Interrupted};
    if (status == ReadStatus::End) {
      input.unterminated = true;
      line.clear();
      break;
    }
  }
  text += line;
  input.text = std::string(trim(text));
  return input;
}

}  // namespace kiln
