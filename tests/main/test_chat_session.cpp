// The chat's parts that need no model: the conversation's JSON form and the assembly of inputs from lines.
#include <gtest/gtest.h>

#include <fstream>
#include <initializer_list>

#include "engine/error.h"
#include "main/chat_input.h"
#include "main/chat_session.h"
#include "tests/convert/kiln_file_fixture.h"

namespace kiln {
namespace {

using nlohmann::json;

std::string error_of(const json& j) {
  try {
    (void)session_from_json(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ChatSession, FromJsonAcceptsSavedAndOpenAiShapes) {
  ChatSession s = session_from_json(json::parse(R"({"system": "Be brief.", "messages": [
      {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})"));
  EXPECT_EQ(s.system, "Be brief.");
  ASSERT_EQ(s.messages.size(), 2u);
  EXPECT_EQ(s.messages[1].content, "hello");
  const std::vector<ChatMessage> seen = s.for_model();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].role, "system");

  s = session_from_json(json::parse(R"({"messages": [{"role": "system", "content": "S"},
      {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]})"));
  EXPECT_EQ(s.system, "S");
  EXPECT_EQ(s.messages.size(), 2u);
  s = session_from_json(json::parse(R"({"system": null, "messages": []})"));
  EXPECT_TRUE(s.system.empty());
  EXPECT_TRUE(s.messages.empty());
}

TEST(ChatSession, FromJsonNamesWhatIsWrong) {
  EXPECT_NE(error_of(json::array()).find("must be a JSON object"), std::string::npos);
  EXPECT_NE(error_of(json::object()).find("no \"messages\""), std::string::npos);
  EXPECT_NE(error_of(json::parse(R"({"messages": {}})")).find("must be an array"), std::string::npos);
  EXPECT_NE(error_of(json::parse(R"({"system": 3, "messages": []})")).find("\"system\" must be a string"),
            std::string::npos);
  EXPECT_NE(error_of(json::parse(R"({"messages": [7]})")).find("message 1 must be an object"), std::string::npos);
  EXPECT_NE(error_of(json::parse(R"({"messages": [{"role": "user"}]})")).find("message 1 has no \"content\""),
            std::string::npos);
  EXPECT_NE(error_of(json::parse(R"({"messages": [{"role": "user", "content": 1}]})")).find("must be a string"),
            std::string::npos);
  EXPECT_NE(error_of(json::parse(R"({"messages": [{"role": "user", "content": "a"},
      {"role": "user", "content": "b"}]})")).find("message 2 has role \"user\" but \"assistant\""),
            std::string::npos);
  EXPECT_NE(error_of(json::parse(R"({"messages": [{"role": "user", "content": "a"}]})")).find("ends with a user"),
            std::string::npos);
  // A system message anywhere but first, or next to a "system" key, is out of turn.
  EXPECT_NE(error_of(json::parse(R"({"system": "S", "messages": [{"role": "system", "content": "T"}]})"))
                .find("message 1 has role \"system\""),
            std::string::npos);
}

TEST(ChatSession, SaveLoadRoundTripAndBadFiles) {
  testing::TempDir dir;
  ChatSession s;
  s.system = "Réponds brièvement.";
  s.messages = {{"user", "line one\nline \"two\""}, {"assistant", "ok\t✓"}, {"user", "bad \xff byte"},
                {"assistant", ""}};
  s.first_in_context = 2;
  const std::string path = dir.file("c.json");
  save_session(s, path);
  const ChatSession loaded = load_session(path);
  EXPECT_EQ(loaded.system, s.system);
  ASSERT_EQ(loaded.messages.size(), 4u);
  EXPECT_EQ(loaded.messages[0].content, s.messages[0].content);
  EXPECT_EQ(loaded.messages[1].content, s.messages[1].content);
  EXPECT_EQ(loaded.messages[2].content, "bad \xEF\xBF\xBD byte") << "invalid UTF-8 is saved replaced";
  EXPECT_EQ(loaded.first_in_context, 0u) << "a loaded conversation is fitted again from its start";
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  auto load_error = [](const std::string& p) {
    try {
      (void)load_session(p);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(load_error(dir.file("absent.json")).find("no such file"), std::string::npos);
  EXPECT_NE(load_error(dir.path().string()).find("it is not a file"), std::string::npos);
  std::ofstream(dir.file("bad.json")) << "{\"messages\": [";
  EXPECT_NE(load_error(dir.file("bad.json")).find("is not valid JSON"), std::string::npos);
  std::ofstream(dir.file("odd.json")) << R"({"messages": "none"})";
  EXPECT_NE(load_error(dir.file("odd.json")).find("is not a saved conversation: \"messages\" must be an array"),
            std::string::npos);
  // A failed save leaves the earlier file whole.
  EXPECT_THROW(save_session(s, dir.file("no/such/folder.json")), Error);
  EXPECT_EQ(load_session(path).messages.size(), 4u);
}

// Lines from a list, then End (or Interrupted where a line is "^C").
class ListReader final : public LineReader {
 public:
  ListReader(std::initializer_list<std::string> lines) : lines_(lines) {}
  ReadStatus read_line(const std::string& prompt, std::string& line) override {
    prompts.push_back(prompt);
    if (next_ == lines_.size()) return ReadStatus::End;
    line = lines_[next_++];
    return line == "^C" ? ReadStatus::Interrupted : ReadStatus::Line;
  }
  std::vector<std::string> prompts;

 private:
  std::vector<std::string> lines_;
  size_t next_ = 0;
};

TEST(ChatInput, JoinsContinuedLinesAndBlocks) {
  ListReader reader{"", "  ", "  plain  ", "first \\", "second\\  ", "third", R"(""")", "  indented", "",
                    R"(end""")", R"("""one line""")", R"(""" starts here)", R"(and ends """)", "/reset"};
  auto next = [&] { return read_chat_input(reader, "> ", "... "); };
  ChatInput in = next();
  EXPECT_EQ(in.status, ReadStatus::Line);
  EXPECT_EQ(in.text, "plain");
  EXPECT_FALSE(in.block);
  EXPECT_EQ(next().text, "first \nsecond\nthird");
  in = next();
  EXPECT_EQ(in.text, "indented\n\nend");
  EXPECT_TRUE(in.block);
  EXPECT_EQ(next().text, "one line");
  EXPECT_EQ(next().text, "starts here\nand ends");
  in = next();
  EXPECT_EQ(in.text, "/reset");
  EXPECT_FALSE(in.block);
  EXPECT_EQ(next().status, ReadStatus::End);
  // The first line of each input gets the prompt, the lines after it the continuation prompt.
  const std::vector<std::string> expected = {"> ", "> ", "> ", "> ", "... ", "... ", "> ", "... ", "... ",
                                             "... ", "> ", "> ", "... ", "> ", "> "};
  EXPECT_EQ(reader.prompts, expected);
}

TEST(ChatInput, InterruptionsAndUnfinishedInput) {
  ListReader interrupted{R"(""")", "some", "^C", "after"};
  EXPECT_EQ(read_chat_input(interrupted, "> ", "... ").status, ReadStatus::Interrupted);
  EXPECT_EQ(read_chat_input(interrupted, "> ", "... ").text, "after");

  ListReader unfinished{R"(""")", "open block"};
  ChatInput in = read_chat_input(unfinished, "> ", "... ");
  EXPECT_EQ(in.status, ReadStatus::Line);
  EXPECT_EQ(in.text, "open block");
  EXPECT_TRUE(in.unterminated);

  ListReader trailing{"continued \\"};
  in = read_chat_input(trailing, "> ", "... ");
  EXPECT_EQ(in.text, "continued");
  EXPECT_TRUE(in.unterminated);
  EXPECT_EQ(read_chat_input(trailing, "> ", "... ").status, ReadStatus::End);
}

}  // namespace
}  // namespace kiln
