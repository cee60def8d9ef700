// kiln batch as a user runs it, on a tiny random llama (converted from tests/data/tiny_llama_gqa_tied with
// a byte tokenizer) and, when it has been downloaded, the real SmolLM2: the three input kinds, one record
// per line in input order, greedy text equal to kiln generate's, and OUT surviving kill -9 and resuming.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "convert/conversion.h"
#include "convert/from_hf.h"
#include "convert/hf_folder.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/convert/tiny_hf_folder.h"
#include "tests/model_paths.h"
#include "tests/run_process.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::ProcessResult;
using testing::run_kiln;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

std::vector<json> records(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) out.push_back(json::parse(line));
  return out;
}

int64_t count_lines(const std::string& path) {
  const std::string text = slurp(path);
  return std::count(text.begin(), text.end(), '\n');
}

// Starts kiln with its output discarded; the caller kills or waits.
pid_t spawn_kiln(const std::vector<std::string>& args) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1), ::dup2(null, 2);
    std::vector<char*> argv = {const_cast<char*>(KILN_BINARY)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

class BatchCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir;
    const fs::path folder = testing::copy_tiny_model(dir_->path(), "llama_gqa_tied");
    testing::write_byte_tokenizer(folder);
    ConvertOptions options;
    options.weight_dtype = DType::F32;
    write_conversion(conversion_from_hf(HfFolder::open(folder.string())), model(), options);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string model() { return dir_->file("tiny.kiln"); }
  std::string file(const std::string& name) const { return dir_->file(name); }

  // kiln batch on the tiny model, greedy, small threads and context.
  static ProcessResult batch(const std::string& in, const std::string& out, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"batch", in, "-o", out, "-m", model(), "--temp", "0", "-t", "1", "-c", "128"};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_kiln(args);
  }
  // What kiln generate prints for one prompt (without its final newline).
  static std::string generate(const std::string& prompt, int n) {
    const ProcessResult r = run_kiln({"generate", "-m", model(), "-p", prompt, "-n", std::to_string(n), "--temp", "0",
                                      "-t", "1", "-c", "128", "--no-stats"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out.substr(0, r.out.size() - 1);
  }

  static testing::TempDir* dir_;
};
testing::TempDir* BatchCli::dir_ = nullptr;

// Prompts of different lengths, so sequences finish at different steps.
std::string plain_prompts(int n) {
  std::string text;
  for (int i = 0; i < n; ++i) text += "prompt " + std::to_string(i) + std::string(size_t(i % 7), '!') + "\n";
  return text;
}

TEST_F(BatchCli, PlainTextGivesOneRecordPerLineWithGenerateGreedyText) {
  write_text(file("plain.txt"), "The cat\n\nsat on the mat and\nx\n");
  const ProcessResult r = batch(file("plain.txt"), file("plain.jsonl"), {"-n", "8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("[batch: 3 ok, 1 failed, 0 resumed | generated 24 tokens"), std::string::npos) << r.err;
  // no more sequence slots than lines (without --parallel)
  EXPECT_NE(r.err.find("up to 4 sequences at once"), std::string::npos) << r.err;
  const auto out = records(file("plain.jsonl"));
  ASSERT_EQ(out.size(), 4u);
  const char* prompts[] = {"The cat", "", "sat on the mat and", "x"};
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(out[size_t(i)]["id"], i + 1);
    if (i == 1) {
      EXPECT_NE(out[1]["error"].get<std::string>().find("line 2: the line is empty"), std::string::npos) << out[1];
      continue;
    }
    EXPECT_FALSE(out[size_t(i)].contains("error"));
    EXPECT_EQ(out[size_t(i)]["completion_tokens"], 8);
    EXPECT_EQ(out[size_t(i)]["finish_reason"], "length");
    EXPECT_EQ(out[size_t(i)]["prompt_tokens"], std::string(prompts[i]).size());  // one byte token each, no BOS
    EXPECT_EQ(out[size_t(i)]["text"], generate(prompts[i], 8));
  }
}

TEST_F(BatchCli, ShorthandLinesTakeTheirOwnLimitsStopsAndMessages) {
  // The tiny model's greedy text for "Hi" ends in a run of one character: stop before the run starts.
  const std::string alone = generate("Hi", 12);
  const json stop = alone.substr(alone.size() - 2);
  const std::string before_stop = alone.substr(0, alone.find(stop.get<std::string>()));
  ASSERT_FALSE(before_stop.empty()) << alone;
  write_text(file("short.jsonl"),
             R"({"id": "a", "prompt": "hello", "max_tokens": 3})"
             "\n"
             R"({"id": "b", "prompt": "Hi", "max_tokens": 12, "stop": )" + stop.dump() + "}\n" +
             R"({"id": 7, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})"
             "\n"
             R"({"id": "d", "prompt": "x", "bogus": 1})"
             "\n"
             "{broken\n"
             R"({"id": "a", "prompt": "again"})"
             "\n");
  const ProcessResult r = batch(file("short.jsonl"), file("short.out.jsonl"), {"--chat-template", "chatml"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = records(file("short.out.jsonl"));
  ASSERT_EQ(out.size(), 6u);
  EXPECT_EQ(out[0]["id"], "a");
  EXPECT_NE(out[0]["error"].get<std::string>().find("lines 1, 6"), std::string::npos) << "a duplicated id: " << out[0];
  EXPECT_EQ(out[1]["id"], "b");
  EXPECT_EQ(out[1]["text"], before_stop);
  EXPECT_EQ(out[1]["finish_reason"], "stop");
  EXPECT_EQ(out[2]["id"], 7);
  EXPECT_EQ(out[2]["completion_tokens"], 4);
  EXPECT_GT(out[2]["prompt_tokens"].get<int>(), 20) << "the chat template wraps the message";
  EXPECT_NE(out[3]["error"].get<std::string>().find("bogus"), std::string::npos);
  EXPECT_TRUE(out[4]["id"].is_null());
  EXPECT_NE(out[4]["error"].get<std::string>().find("line 5"), std::string::npos);
  EXPECT_EQ(out[5]["id"], "a");
  EXPECT_TRUE(out[5].contains("error"));
}

TEST_F(BatchCli, OpenAiBatchLinesGetOpenAiOutputLines) {
  write_text(file("openai.jsonl"),
             R"({"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "x", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}})"
             "\n"
             R"({"custom_id": "text-1", "method": "POST", "url": "/v1/completions", "body": {"model": "x", "prompt": "The cat", "max_tokens": 6}})"
             "\n"
             R"({"custom_id": "bad", "method": "POST", "url": "/v1/embeddings", "body": {}})"
             "\n");
  const ProcessResult r = batch(file("openai.jsonl"), file("openai.out.jsonl"), {"--chat-template", "chatml"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = records(file("openai.out.jsonl"));
  ASSERT_EQ(out.size(), 3u);
  std::set<std::string> ids;
  for (const json& rec : out) ids.insert(rec["id"].get<std::string>());
  EXPECT_EQ(ids.size(), 3u);
  EXPECT_EQ(out[0]["custom_id"], "chat-1");
  EXPECT_TRUE(out[0]["error"].is_null());
  EXPECT_EQ(out[0]["response"]["status_code"], 200);
  const json& chat = out[0]["response"]["body"];
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["model"], "tiny");
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(chat["usage"]["completion_tokens"], 5);
  EXPECT_EQ(chat["usage"]["total_tokens"].get<int>(),
            chat["usage"]["prompt_tokens"].get<int>() + chat["usage"]["completion_tokens"].get<int>());
  const json& text = out[1]["response"]["body"];
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0]["text"], generate("The cat", 6));
  EXPECT_EQ(text["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(out[2]["custom_id"], "bad");
  EXPECT_TRUE(out[2]["response"].is_null());
  EXPECT_EQ(out[2]["error"]["code"], "invalid_request");
}

TEST_F(BatchCli, RefusesToWriteOverTheInput) {
  write_text(file("self.txt"), "keep me\n");
  fs::create_symlink(file("self.txt"), file("self-link.jsonl"));
  fs::create_hard_link(file("self.txt"), file("self-hard.jsonl"));
  for (const std::string& out : {file("self.txt"), file("self-link.jsonl"), file("self-hard.jsonl")}) {
    const ProcessResult r = batch(file("self.txt"), out);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("is the input file"), std::string::npos) << r.err;
  }
  EXPECT_EQ(slurp(file("self.txt")), "keep me\n");
  write_text(file("other.jsonl"), "my notes, not a batch output\n");
  ProcessResult r = batch(file("self.txt"), file("other.jsonl"));
  EXPECT_NE(r.err.find("is not a batch record"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(file("other.jsonl")), "my notes, not a batch output\n");
  write_text(file("another.jsonl"), R"({"id": 99, "text": "from another batch"})" "\n");
  r = batch(file("self.txt"), file("another.jsonl"));
  EXPECT_NE(r.err.find("holds a result for id 99, which the input does not have"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(file("another.jsonl")), "{\"id\": 99, \"text\": \"from another batch\"}\n");
  r = batch(file("self.txt"), file("other.jsonl"), {"-n", "2", "--force"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(records(file("other.jsonl")).size(), 1u);
}

TEST_F(BatchCli, ResumesAfterKillNineAndEndsEqualToAnUninterruptedRun) {
  const int n = 200;
  write_text(file("many.txt"), plain_prompts(n));
  const std::vector<std::string> flags = {"-n", "40", "--parallel", "3"};
  ProcessResult r = batch(file("many.txt"), file("whole.jsonl"), flags);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string whole = slurp(file("whole.jsonl"));
  ASSERT_EQ(count_lines(file("whole.jsonl")), n);

  // Two kills at different points, each after some records were written; every time OUT holds whole lines.
  const std::string out = file("killed.jsonl");
  int64_t before = 0;
  for (int64_t target : {5, 40}) {
    std::vector<std::string> args = {"batch", file("many.txt"), "-o", out, "-m", model(), "--temp", "0",
                                     "-t", "1", "-c", "128"};
    args.insert(args.end(), flags.begin(), flags.end());
    const pid_t pid = spawn_kiln(args);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (count_lines(out) < target && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the run ended before it was killed";
    const std::string text = slurp(out);
    const int64_t lines = count_lines(out);
    EXPECT_TRUE(text.empty() || text.back() == '\n') << "a torn line";
    EXPECT_GE(lines, before) << "a resumed run lost records";
    EXPECT_LT(lines, n) << "killed too late to test resuming";
    for (const json& rec : records(out)) EXPECT_TRUE(rec.contains("text")) << rec;
    before = lines;
  }
  r = batch(file("many.txt"), out, flags);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find(std::to_string(before) + " resumed"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(out), whole);
}

TEST_F(BatchCli, ATornLastLineIsDroppedOnResumeAndForceStartsOver) {
  write_text(file("torn.txt"), plain_prompts(6));
  ProcessResult r = batch(file("torn.txt"), file("torn.jsonl"), {"-n", "6"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string whole = slurp(file("torn.jsonl"));
  fs::resize_file(file("torn.jsonl"), whole.size() - 10);  // the last record cut short
  r = batch(file("torn.txt"), file("torn.jsonl"), {"-n", "6"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("1 ok, 0 failed, 5 resumed"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(file("torn.jsonl")), whole);
  r = batch(file("torn.txt"), file("torn.jsonl"), {"-n", "6", "--force"});
  EXPECT_NE(r.err.find("6 ok, 0 failed, 0 resumed"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(file("torn.jsonl")), whole);
}

TEST_F(BatchCli, NoSortKeepsCompletionOrder) {
  // The first request is the longest, so with two at once it finishes last.
  write_text(file("order.jsonl"), R"({"id": 1, "prompt": "a", "max_tokens": 30})"
                                  "\n"
                                  R"({"id": 2, "prompt": "b", "max_tokens": 1})"
                                  "\n"
                                  R"({"id": 3, "prompt": "c", "max_tokens": 2})"
                                  "\n");
  ProcessResult r = batch(file("order.jsonl"), file("order.out.jsonl"), {"--no-sort", "--parallel", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto out = records(file("order.out.jsonl"));
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0]["id"], 2);
  EXPECT_EQ(out[2]["id"], 1);
  r = batch(file("order.jsonl"), file("order.out.jsonl"), {"--parallel", "2"});
  out = records(file("order.out.jsonl"));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out[size_t(i)]["id"], i + 1) << "sorted once the run completes";
}

TEST_F(BatchCli, ProfileSplitsTheWallTime) {
  write_text(file("profile.txt"), "a\nbc\n");
  const ProcessResult r = batch(file("profile.txt"), file("profile.jsonl"), {"-n", "4", "--profile"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(records(file("profile.jsonl")).size(), 2u);
  // the CPU backend times no stages; the forward steps and the sampling are timed all the same
  EXPECT_NE(r.err.find("no stage was timed"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("  forward "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("  sampling "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("  the rest "), std::string::npos) << r.err;
}

TEST_F(BatchCli, BadArgumentsGiveOneLineErrors) {
  write_text(file("args.txt"), "a\n");
  for (const auto& [args, part] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"batch", file("args.txt"), "-m", model()}, "-o OUT.jsonl"},
           {{"batch", "-o", file("x.jsonl"), "-m", model()}, "give the requests file"},
           {{"batch", file("missing.txt"), "-o", file("x.jsonl"), "-m", model()}, "cannot read the input"},
           {{"batch", file("args.txt"), "-o", file("x.jsonl")}, "give the model"},
           {{"batch", file("args.txt"), "-o", file("x.jsonl"), "-m", model(), "--kv-memory", "lots"}, "kv-memory"},
           {{"batch", file("args.txt"), "-o", file("x.jsonl"), "-m", model(), "--parallel", "-2"}, "--parallel"},
           {{"batch", file("args.txt"), "-o", file("x.jsonl"), "-m", model(), "-tp", "2"}, "leave out -tp"}}) {
    const ProcessResult r = run_kiln(args);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_LT(r.exit_code, 128) << r.err;
    EXPECT_NE(r.err.find(part), std::string::npos) << r.err;
  }
}

// The real model: greedy batch text equals kiln generate's for plain and chat prompts. f16 weights: int8
// matmuls of one row and of many round differently (see test_batch_scheduler).
TEST(BatchSmolLM2, GreedyTextEqualsGenerate) {
  KILN_REQUIRE_SMOLLM2(gguf);
  testing::TempDir dir;
  const std::string model = dir.file("smol.kiln");
  ProcessResult r = run_kiln({"convert", gguf, "-o", model, "--type", "f16"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> prompts = {"The capital of France is", "Once upon a time",
                                            "def fibonacci(n):", "List three colors:"};
  std::string in;
  for (const auto& p : prompts) in += p + "\n";
  in += R"({"id": "c", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 12})";
  write_text(dir.file("plain.txt"), in.substr(0, in.find('{')));
  write_text(dir.file("chat.jsonl"), in.substr(in.find('{')) + "\n");
  r = run_kiln({"batch", dir.file("plain.txt"), "-o", dir.file("plain.jsonl"), "-m", model, "-n", "16", "--temp", "0",
                "-c", "256"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = records(dir.file("plain.jsonl"));
  ASSERT_EQ(out.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const ProcessResult alone = run_kiln({"generate", "-m", model, "-p", prompts[i], "-n", "16", "--temp", "0", "-c",
                                          "256", "--no-stats"});
    EXPECT_EQ(out[i]["text"].get<std::string>() + "\n", alone.out) << prompts[i];
  }
  EXPECT_EQ(out[0]["text"].get<std::string>().rfind(" Paris", 0), 0u) << out[0];
  r = run_kiln({"batch", dir.file("chat.jsonl"), "-o", dir.file("chat.out.jsonl"), "-m", model, "--temp", "0", "-c",
                "256"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const ProcessResult alone = run_kiln({"generate", "-m", model, "--chat", "-p", "What is 2+2?", "-n", "12", "--temp",
                                        "0", "-c", "256", "--no-stats"});
  EXPECT_EQ(records(dir.file("chat.out.jsonl"))[0]["text"].get<std::string>() + "\n", alone.out);
}

}  // namespace
}  // namespace kiln
