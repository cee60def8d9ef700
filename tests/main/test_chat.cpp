// kiln chat as a user meets it, with the real SmolLM2 (int8) and greedy sampling so every reply is
// reproducible: piped turns, commands, the context policy, and Ctrl-C on a pseudo-terminal.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/convert/kiln_file_fixture.h"
#include "tests/main/pty_process.h"
#include "tests/model_paths.h"
#include "tests/run_process.h"

namespace kiln {
namespace {

using testing::ProcessResult;
using testing::PtyProcess;
using testing::run_kiln;
using testing::TempDir;

// A system prompt that keeps the small model's answers short and on the facts it is told.
const std::string kSystem = "You are a helpful assistant. Answer briefly.";
const std::string kFact = "The password is Ada.";
const std::string kQuestion = "What is the password?";

size_t count(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

class Chat : public ::testing::Test {
 protected:
  // Converts the GGUF once into the build folder (the tests' working directory) and reuses it until
  // the kiln binary is rebuilt; each ctest case is its own process.
  static void SetUpTestSuite() {
    const std::string gguf = testing::smollm2_gguf_path();
    if (gguf.empty()) return;
    const std::filesystem::path model = std::filesystem::absolute("chat_test_model.kiln");
    std::error_code error;
    if (std::filesystem::exists(model) &&
        std::filesystem::last_write_time(model) >= std::filesystem::last_write_time(KILN_BINARY, error)) {
      model_ = model.string();
      return;
    }
    const std::string partial = model.string() + "." + std::to_string(::getpid());
    const ProcessResult r = run_kiln({"convert", gguf, "-o", partial, "--type", "int8"});
    if (r.exit_code != 0) {
      convert_error_ = r.err;
      std::filesystem::remove(partial, error);
      return;
    }
    std::filesystem::rename(partial, model);  // atomic: a parallel case sees the old file or the new one
    model_ = model.string();
  }

  void SetUp() override {
    if (testing::smollm2_gguf_path().empty())
      GTEST_SKIP() << "SmolLM2 GGUF not found under " << testing::model_cache_dir() << ": run scripts/test";
    ASSERT_FALSE(model_.empty()) << "converting the model failed: " << convert_error_;
  }

  // Runs kiln chat with stdin piped: greedy, at most 24 tokens a reply, the short-answer system prompt.
  static ProcessResult chat(const std::string& input, std::vector<std::string> extra = {},
                            const std::string& system = kSystem) {
    std::vector<std::string> args = {"chat", "-m", model_, "--temp", "0", "-n", "24", "--system", system};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_kiln(args, input);
  }

  // The reply to one message in a fresh session, with its newline.
  static std::string fresh_reply(const std::string& message, const std::string& system = kSystem) {
    const ProcessResult r = chat(message + "\n", {}, system);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
  }

  static inline std::string model_;
  static inline std::string convert_error_;
};

TEST_F(Chat, PipedTurnsCarryTheConversation) {
  const std::string fact_reply = fresh_reply(kFact);
  const std::string alone = fresh_reply(kQuestion);
  ASSERT_FALSE(fact_reply.empty());
  ASSERT_EQ(alone.find("Ada"), std::string::npos) << "without the first turn the model cannot know: " << alone;

  const ProcessResult r = chat(kFact + "\n" + kQuestion + "\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(r.out.starts_with(">")) << "no prompt characters when stdin is not a terminal";
  ASSERT_TRUE(r.out.starts_with(fact_reply)) << r.out;
  const std::string second = r.out.substr(fact_reply.size());
  EXPECT_NE(second.find("Ada"), std::string::npos) << "the second reply should use the first turn: " << second;
  EXPECT_NE(second, alone);
  EXPECT_EQ(r.out.find("<|"), std::string::npos) << "special tokens are never printed: " << r.out;

  // One stats line per reply on stderr, with the speeds, the first token time and the context use.
  EXPECT_EQ(count(r.err, "[prompt "), 2u) << r.err;
  EXPECT_EQ(count(r.err, " t/s | "), 4u) << "prompt and generation speeds: " << r.err;
  EXPECT_EQ(count(r.err, "| first token "), 2u) << r.err;
  EXPECT_EQ(count(r.err, "/4096 | "), 2u) << "context used / context size: " << r.err;
}

TEST_F(Chat, ResetForgetsTheTurnsAndKeepsTheSystemPrompt) {
  const ProcessResult r = chat(kFact + "\n/reset\n" + kQuestion + "\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.ends_with(fresh_reply(kQuestion))) << r.out;
  EXPECT_NE(r.err.find("conversation cleared"), std::string::npos) << r.err;

  // /clear is the same, and /system changes the prompt the next reply sees.
  const std::string other_system = "You are a pirate. Answer briefly.";
  const ProcessResult s = chat(kFact + "\n/clear\n/system " + other_system + "\n" + kQuestion + "\n");
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_TRUE(s.out.ends_with(fresh_reply(kQuestion, other_system))) << s.out;
}

TEST_F(Chat, SaveAndLoadRoundTrip) {
  TempDir dir;
  const std::string saved = dir.file("conversation.json");
  const std::string fact_reply = fresh_reply(kFact);
  const ProcessResult both = chat(kFact + "\n" + kQuestion + "\n");
  ASSERT_EQ(both.exit_code, 0) << both.err;

  ProcessResult r = chat(kFact + "\n/save " + saved + "\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json json = nlohmann::json::parse(read_file(saved), nullptr, false);
  ASSERT_FALSE(json.is_discarded()) << read_file(saved);
  EXPECT_EQ(json["system"], kSystem);
  ASSERT_EQ(json["messages"].size(), 2u) << json.dump();
  EXPECT_EQ(json["messages"][0]["role"], "user");
  EXPECT_EQ(json["messages"][0]["content"], kFact);
  EXPECT_EQ(json["messages"][1]["role"], "assistant");
  EXPECT_EQ(json["messages"][1]["content"].get<std::string>() + "\n", fact_reply);

  // A new session that loads it answers as the session that had the turn (the system prompt is
  // loaded too: this one starts with another).
  r = chat("/load " + saved + "\n" + kQuestion + "\n", {}, "Say nothing.");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(fact_reply + r.out, both.out);
  EXPECT_NE(r.err.find("loaded 2 messages"), std::string::npos) << r.err;

  // A bad file is refused with one error line and the conversation goes on unchanged.
  std::ofstream(dir.file("garbage.json")) << "{\"messages\": [ this is not json";
  std::ofstream(dir.file("odd.json")) << R"({"messages": [{"role": "assistant", "content": "hi"}]})";
  r = chat(kFact + "\n/load " + dir.file("garbage.json") + "\n/load " + dir.file("odd.json") + "\n/load " +
           dir.file("absent.json") + "\n" + kQuestion + "\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, both.out);
  EXPECT_EQ(count(r.err, "error: "), 3u) << r.err;
  EXPECT_NE(r.err.find("garbage.json' is not valid JSON"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("message 1 has role \"assistant\""), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("absent.json"), std::string::npos) << r.err;
}

TEST_F(Chat, CommandsActOnTheConversation) {
  const std::string fact_reply = fresh_reply(kFact);
  // Greedy: writing the last reply again gives it again, from the same conversation.
  ProcessResult r = chat(kFact + "\n/regen\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, fact_reply + fact_reply);

  r = chat("/regen\n/frobnicate\n/help\n/stats\n/exit\n" + kFact + "\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("error: there is no reply"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("error: unknown command '/frobnicate'"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("/save FILE"), std::string::npos) << "/help lists the commands: " << r.out;
  EXPECT_NE(r.err.find("turns 0"), std::string::npos) << r.err;
  EXPECT_EQ(count(r.err, "[prompt "), 0u) << "nothing after /exit is read: " << r.err;
}

// /set changes the next replies as the flags would have set them from the start.
TEST_F(Chat, SetChangesTheRepliesAsTheFlagsWould) {
  const ProcessResult by_flags = chat(kFact + "\n", {"--temp", "0.7", "-s", "5", "-n", "6"});
  ASSERT_EQ(by_flags.exit_code, 0) << by_flags.err;
  const ProcessResult by_set = chat("/set temp 0.7\n/set seed 5\n/set n 6\n" + kFact + "\n");
  ASSERT_EQ(by_set.exit_code, 0) << by_set.err;
  EXPECT_EQ(by_set.out, by_flags.out);
  EXPECT_NE(by_set.err.find("[temp 0.7, top-k 40, top-p 0.95, min-p 0.05, repeat-penalty 1, seed 5, n 6]"),
            std::string::npos) << by_set.err;

  const ProcessResult r = chat("/set\n/set temp -1\n/set warmth 2\n/set seed x\n/set top-k 2.5\n/set n\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("temp 0, top-k 40"), std::string::npos) << "/set alone lists them: " << r.out;
  for (const char* part : {"temperature -1", "unknown setting 'warmth'", "'x' is not a number",
                           "'2.5' is not a whole number", "give a setting and its value"})
    EXPECT_NE(r.err.find(part), std::string::npos) << part << "\n" << r.err;
}

// /read sends a file's text as the message, as if typed (its trailing newlines dropped).
TEST_F(Chat, ReadSendsAFileAsTheMessage) {
  TempDir dir;
  std::ofstream(dir.file("fact.txt")) << kFact << "\n\n";
  std::ofstream(dir.file("blank.txt")) << " \n";
  const ProcessResult r = chat("/read " + dir.file("fact.txt") + "\n" + kQuestion + "\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, chat(kFact + "\n" + kQuestion + "\n").out);
  EXPECT_NE(r.err.find("[read " + std::to_string(kFact.size()) + " bytes from"), std::string::npos) << r.err;

  const ProcessResult bad = chat("/read " + dir.file("absent.txt") + "\n/read " + dir.file("blank.txt") + "\n/read\n");
  EXPECT_NE(bad.err.find("absent.txt' is not a file"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("blank.txt' is empty"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("give the file: /read FILE"), std::string::npos) << bad.err;
  EXPECT_EQ(count(bad.err, "[prompt "), 0u) << "nothing was sent: " << bad.err;
}

TEST_F(Chat, MultiLineInputIsOneMessage) {
  TempDir dir;
  const std::string saved = dir.file("lines.json");
  const std::string input = "\"\"\"\nThe password\n\n  is Ada.\n\"\"\"\nWhat is \\\nthe password?\n"
                            "\"\"\"/save is text here\"\"\"\n/save " + saved + "\n\"\"\"never closed\n";
  const ProcessResult r = chat(input, {"-n", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json json = nlohmann::json::parse(read_file(saved), nullptr, false);
  ASSERT_FALSE(json.is_discarded());
  ASSERT_EQ(json["messages"].size(), 6u) << json.dump();
  EXPECT_EQ(json["messages"][0]["content"], "The password\n\n  is Ada.");
  EXPECT_EQ(json["messages"][2]["content"], "What is \nthe password?");
  EXPECT_EQ(json["messages"][4]["content"], "/save is text here");
  // The unterminated block at the end of the input is still answered.
  EXPECT_EQ(count(r.err, "[prompt "), 4u) << r.err;
  EXPECT_NE(r.err.find("ended inside a message"), std::string::npos) << r.err;
}

TEST_F(Chat, DropsTheOldestTurnsToFitTheContext) {
  std::string words;
  for (int i = 0; i < 150; ++i) words += "apple ";
  const std::string input = "Hello.\nWhat is a cat?\nWhat is a dog?\nWhat is a bird?\n" + words + "\nWhat is a fish?\n";
  const ProcessResult r = chat(input, {"-c", "128"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("[dropped the 2 oldest turns to fit the context"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("24 kept for the reply, context 128]"), std::string::npos) << r.err;
  // The message that cannot fit alone gets an error; the one after it is answered.
  EXPECT_NE(r.err.find("error: this message needs 173 tokens"), std::string::npos) << r.err;
  EXPECT_EQ(count(r.err, "[prompt "), 5u) << r.err;
  EXPECT_EQ(count(r.err, "/128"), 5u) << r.err;
}

TEST(ChatArgs, BadInputGivesOneLineErrors) {
  TempDir dir;
  auto expect_error = [](const ProcessResult& r, const std::string& part) {
    EXPECT_NE(r.exit_code, 0);
    EXPECT_LT(r.exit_code, 128) << "killed by a signal: " << r.err;
    EXPECT_NE(r.err.find(part), std::string::npos) << r.err;
    EXPECT_EQ(count(r.err, "\n"), 1u) << r.err;
  };
  const std::string absent = dir.file("absent.kiln");
  expect_error(run_kiln({"chat"}, "hello\n"), "give the model: -m");
  expect_error(run_kiln({"chat", "-m", absent}, "hello\n"), "cannot open");
  expect_error(run_kiln({"chat", "-m", absent, "--temp", "-1"}, "hello\n"), "temperature -1");
  expect_error(run_kiln({"chat", "-m", absent, "--top-p", "2"}, "hello\n"), "top-p 2");
  expect_error(run_kiln({"chat", "-m", absent, "-n", "-2"}, "hello\n"), "-n -2");
  std::ofstream(dir.file("garbage.kiln")) << "not a model";
  expect_error(run_kiln({"chat", "-m", dir.file("garbage.kiln")}, "hello\n"), "garbage.kiln");
}

// Types a line at the prompt and waits for the reply to start: the line editor has handed the terminal
// back and a printable character follows the echoed line. Returns the position of the echo's end.
size_t ask(PtyProcess& chat, const std::string& question, size_t from) {
  if (!chat.wait_for_editing(true, 60)) return std::string::npos;
  chat.send(question + "\r");
  const size_t echoed = chat.wait_for(question + "\r\n", from, 60);
  if (echoed == std::string::npos || !chat.wait_for_editing(false, 60)) return std::string::npos;
  const bool started = chat.wait_until([&] {
    const std::string& out = chat.output();
    return std::any_of(out.begin() + long(echoed), out.end(), [](char c) { return std::isalnum((unsigned char)c); });
  }, 60);
  return started ? echoed : std::string::npos;
}

TEST_F(Chat, CtrlCStopsAReplyAndKeepsTheConversation) {
  TempDir dir;
  const std::string history = dir.file("history");
  PtyProcess chat({KILN_BINARY, "chat", "-m", model_, "--temp", "0", "-n", "400"},
                  {"KILN_HISTORY=" + history, "TERM=dumb"});
  ASSERT_TRUE(chat.started());
  size_t at = chat.wait_for("> ", 0, 60);
  ASSERT_NE(at, std::string::npos) << chat.output();

  at = ask(chat, "Tell me a long story about a dragon.", at);
  ASSERT_NE(at, std::string::npos) << chat.output();
  chat.send("\x03");
  at = chat.wait_for("[interrupted]", at, 60);
  ASSERT_NE(at, std::string::npos) << chat.output();
  at = chat.wait_for("[prompt ", at, 60);
  ASSERT_NE(at, std::string::npos) << "the stats line follows: " << chat.output();
  at = chat.wait_for("\n> ", at, 60);
  ASSERT_NE(at, std::string::npos) << "the prompt comes back: " << chat.output();

  at = ask(chat, "What is 2+2?", at);
  ASSERT_NE(at, std::string::npos) << chat.output();
  at = chat.wait_for("]\r\n> ", at, 60);
  ASSERT_NE(at, std::string::npos) << "the reply ends with its stats and a prompt: " << chat.output();

  ASSERT_TRUE(chat.wait_for_editing(true, 60));
  chat.send("/exit\r");
  EXPECT_EQ(chat.wait_exit(30), 0) << chat.output();
  // Lines typed at the terminal are kept in the history file, readable only by the user.
  EXPECT_NE(read_file(history).find("2+2?"), std::string::npos) << read_file(history);
  struct stat info = {};
  ASSERT_EQ(::stat(history.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
}

TEST_F(Chat, CtrlCTwiceAtThePromptOrCtrlDLeaves) {
  TempDir dir;
  const std::vector<std::string> args = {KILN_BINARY, "chat", "-m", model_};
  const std::vector<std::string> env = {"KILN_HISTORY=" + dir.file("history"), "TERM=dumb"};
  {
    PtyProcess chat(args, env);
    size_t at = chat.wait_for("> ", 0, 60);
    ASSERT_NE(at, std::string::npos) << chat.output();
    // A """ block continues on a second prompt; Ctrl-C discards it and does not leave.
    ASSERT_TRUE(chat.wait_for_editing(true, 60));
    chat.send("\"\"\"\r");
    at = chat.wait_for("... ", at, 30);
    ASSERT_NE(at, std::string::npos) << chat.output();
    ASSERT_TRUE(chat.wait_for_editing(true, 60));
    chat.send("half a thought\x03");
    at = chat.wait_for("Ctrl-C again to leave", at, 30);
    ASSERT_NE(at, std::string::npos) << chat.output();
    at = chat.wait_for("> ", at, 30);
    ASSERT_NE(at, std::string::npos) << chat.output();
    ::usleep(1'200'000);  // more than a second apart: not a double press
    ASSERT_TRUE(chat.wait_for_editing(true, 60));
    chat.send("\x03");
    at = chat.wait_for("Ctrl-C again to leave", at, 30);
    ASSERT_NE(at, std::string::npos) << chat.output();
    ASSERT_TRUE(chat.wait_for_editing(true, 60));
    chat.send("\x03");
    EXPECT_EQ(chat.wait_exit(30), 130) << chat.output();
  }
  {
    PtyProcess chat(args, env);
    ASSERT_TRUE(chat.wait_for_editing(true, 60)) << chat.output();
    chat.send("\x04");
    EXPECT_EQ(chat.wait_exit(30), 0) << chat.output();
  }
}

}  // namespace
}  // namespace kiln
