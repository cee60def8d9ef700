// kiln generate, perplexity, bench and tokenize as a user runs them on the real SmolLM2 (int8).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/convert/kiln_file_fixture.h"
#include "tests/model_paths.h"
#include "tests/run_process.h"

namespace kiln {
namespace {

using testing::run_kiln;

class Generate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string gguf = testing::smollm2_gguf_path();
    if (gguf.empty()) return;
    dir_ = new testing::TempDir;
    const auto r = run_kiln({"convert", gguf, "-o", model(), "--type", "int8"});
    if (r.exit_code != 0) ADD_FAILURE() << r.err;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (!dir_) GTEST_SKIP() << "SmolLM2 GGUF not found under " << testing::model_cache_dir() << ": run scripts/test";
  }
  static std::string model() { return dir_->file("smol.kiln"); }
  static testing::TempDir* dir_;
};
testing::TempDir* Generate::dir_ = nullptr;

void expect_clean_error(const testing::ProcessResult& r, const std::string& expected_part) {
  EXPECT_NE(r.exit_code, 0);
  EXPECT_LT(r.exit_code, 128) << "killed by a signal: " << r.err;
  EXPECT_NE(r.err.find(expected_part), std::string::npos) << r.err;
}

TEST_F(Generate, StreamsAFactualGreedyContinuation) {
  const auto r = run_kiln({"generate", "-m", model(), "-p", "The capital of France is", "-n", "4", "--temp", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind(" Paris", 0), 0u) << r.out;
  EXPECT_NE(r.err.find("generated 4 tokens"), std::string::npos) << r.err;  // stats go to stderr
}

TEST_F(Generate, StopsAtAStopStringAndAtTheEndOfTurn) {
  auto r = run_kiln({"generate", "-m", model(), "-p", "The capital of France is", "-n", "16", "--temp", "0", "--stop",
                     "."});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, " Paris\n");
  EXPECT_NE(r.err.find("| stop]"), std::string::npos) << r.err;
  r = run_kiln({"generate", "-m", model(), "--chat", "-p", "Say hello.", "-n", "200", "--temp", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.find("<|im_end|>"), std::string::npos) << "special tokens are never printed: " << r.out;
  EXPECT_NE(r.err.find("| stop]"), std::string::npos) << "the reply ends at the end of turn: " << r.err;
}

// -sys and -ngl, which cxxopts alone would read as "-s ys" and "-n gl".
TEST_F(Generate, TakesLlamaCppsMultiLetterFlags) {
  const auto r = run_kiln({"generate", "-m", model(), "--chat", "-sys", "Answer in one word.", "-p", "Hi", "-n", "4",
                           "--temp", "0", "-ngl", "99"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
}

// Split over 3 ranks on the CPU (tensor parallelism), the model writes what it writes on one.
TEST_F(Generate, TensorParallelGivesTheSameText) {
  const std::vector<std::string> args = {"generate", "-m", model(), "-p", "The capital of France is", "-n", "6",
                                         "--temp", "0", "--device", "cpu"};
  auto split_args = args;
  split_args.insert(split_args.end(), {"-tp", "3"});
  const auto one = run_kiln(args), split = run_kiln(split_args);
  ASSERT_EQ(split.exit_code, 0) << split.err;
  EXPECT_EQ(split.out, one.out);
  expect_clean_error(run_kiln({"generate", "-m", model(), "-p", "hi", "--device", "cpu", "-tp", "4"}),
                     "use at most -tp 3");
  expect_clean_error(run_kiln({"generate", "-m", model(), "-p", "hi", "-tp", "0"}), "-tp 0 must be");
}

TEST_F(Generate, SameSeedSameText) {
  std::vector<std::string> args = {"generate", "-m", model(), "-p", "Once upon a time", "-n", "12", "-s", "42"};
  const auto a = run_kiln(args), b = run_kiln(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
}

TEST_F(Generate, BadInputGivesClearErrors) {
  expect_clean_error(run_kiln({"generate", "-m", model(), "-p", ""}), "the prompt is empty");
  expect_clean_error(run_kiln({"generate", "-m", model()}), "give the prompt");
  expect_clean_error(run_kiln({"generate", "-p", "hi"}), "give the model");
  expect_clean_error(run_kiln({"generate", "-m", "/nonexistent/model.kiln", "-p", "hi"}), "cannot open");
  expect_clean_error(run_kiln({"generate", "-m", model(), "-p", "hi", "--temp", "-1"}), "temperature");
  expect_clean_error(run_kiln({"generate", "-m", model(), "-p", "hi", "--top-p", "2"}), "top-p 2");
  expect_clean_error(run_kiln({"generate", "-m", model(), "-p", "hi", "-n", "-5"}), "-n");
  expect_clean_error(run_kiln({"generate", "-m", model(), "-p", "hi", "--cache-type", "q4"}),
                     "--cache-type 'q4' is not f16, fp8 or f32");
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += "word ";
  expect_clean_error(run_kiln({"generate", "-m", model(), "-p", long_prompt, "-c", "64"}), "context holds 64");
}

TEST_F(Generate, PerplexityBenchAndTokenizeRun) {
  auto r = run_kiln({"perplexity", "-m", model(), "-f", std::string(KILN_SOURCE_DIR) + "/tests/data/declaration_of_independence.txt",
                     "-c", "128", "--chunks", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Final estimate: PPL = "), std::string::npos) << r.out;

  r = run_kiln({"bench", "-m", model(), "-p", "16", "-n", "4", "-r", "1", "-o", "json", "-c", "64"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = nlohmann::json::parse(r.out);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["test"], "pp16");
  EXPECT_GT(rows[0]["avg_ts"].get<double>(), 0);
  EXPECT_GT(rows[1]["achieved_bandwidth_gbs"].get<double>(), 0);
  EXPECT_GT(rows[1]["read_bandwidth_gbs"].get<double>(), 0);
  // --cache-type sets a GPU's cache: the CPU keeps f32, says so, and its rows too.
  r = run_kiln({"bench", "-m", model(), "-p", "4", "-n", "2", "-r", "1", "-o", "json", "-c", "64", "--device", "cpu",
                "--cache-type", "fp8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)[0]["type_kv"], "f32");
  EXPECT_NE(r.err.find("the CPU keeps its cache in f32"), std::string::npos) << r.err;
  expect_clean_error(run_kiln({"bench", "-m", model(), "-p", "x"}), "is not a count");
  expect_clean_error(run_kiln({"bench", "-m", model(), "--cache-type", "q4"}),
                     "--cache-type 'q4' is not f16, fp8 or f32");

  r = run_kiln({"tokenize", "-m", model(), "--ids", "Hello world, 123"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "19556 905 28 216 33 34 35\n");  // the ids of HF tokenizers for this text
  r = run_kiln({"detokenize", "-m", model(), "19556", "905", "28"});
  EXPECT_EQ(r.out.rfind("Hello world,", 0), 0u) << r.out;
}

}  // namespace
}  // namespace kiln
