// The kiln binary as a user meets it: help, conversion, info, verify, and clear one-line errors.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "convert/kiln_writer.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/model_paths.h"
#include "tests/run_process.h"

namespace kiln {
namespace {

using testing::run_kiln;
using testing::TempDir;

// An error is reported on stderr on one line, and the exit code is non-zero.
void expect_clean_error(const testing::ProcessResult& r, const std::string& expected_part) {
  EXPECT_NE(r.exit_code, 0);
  EXPECT_LT(r.exit_code, 128) << "killed by a signal: " << r.err;
  EXPECT_NE(r.err.find(expected_part), std::string::npos) << r.err;
  EXPECT_LE(std::count(r.err.begin(), r.err.end(), '\n'), 2) << r.err;
}

TEST(Cli, HelpListsEveryCommandAndEachHasItsOwnHelp) {
  const auto r = run_kiln({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* command : {"convert", "info", "verify"}) {
    EXPECT_NE(r.out.find(std::string("  ") + command), std::string::npos) << command;
    const auto help = run_kiln({command, "--help"});
    EXPECT_EQ(help.exit_code, 0) << command;
    EXPECT_NE(help.out.find("Usage:"), std::string::npos) << command;
  }
  expect_clean_error(run_kiln({"frobnicate"}), "unknown command 'frobnicate'");
  expect_clean_error(run_kiln({"info", "--no-such-flag"}), "no-such-flag");
}

// Every family kiln lists is one it converts in the tests: the tiny Hugging Face fixtures (tests/data/tiny_*)
// hold exactly the listed model types, and the GGUF tests read the listed tensor types.
// --version names the commit the binary was built from: in a git checkout, the one checked out now (the
// hash is taken at every build, not when the build was configured).
TEST(Cli, VersionNamesTheCheckedOutCommit) {
  const auto git = testing::run_process({"/usr/bin/env", "git", "-C", KILN_SOURCE_DIR, "rev-parse", "--short", "HEAD"});
  if (git.exit_code != 0 || git.out.empty()) GTEST_SKIP() << "not a git checkout (or no git): " << git.err;
  const std::string hash = git.out.substr(0, git.out.find_first_of("\r\n"));
  const auto r = run_kiln({"--version"});
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("(git " + hash + ")"), std::string::npos) << r.out;
}

TEST(Cli, ListArchsNamesTheFamiliesTheFixturesConvert) {
  const auto r = run_kiln({"convert", "--list-archs"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string marker = "(config.json model_type): ";
  const size_t begin = r.out.find(marker);
  ASSERT_NE(begin, std::string::npos) << r.out;
  std::set<std::string> listed;
  std::stringstream types(r.out.substr(begin + marker.size(), r.out.find('\n', begin) - begin - marker.size()));
  for (std::string type; std::getline(types >> std::ws, type, ',');) listed.insert(type);
  std::set<std::string> fixtures;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(KILN_SOURCE_DIR) + "/tests/data")) {
    if (!entry.path().filename().string().starts_with("tiny_")) continue;
    std::ifstream config(entry.path() / "config.json");
    fixtures.insert(nlohmann::json::parse(config).at("model_type").get<std::string>());
  }
  EXPECT_EQ(listed, fixtures);
  EXPECT_NE(r.out.find("(general.architecture): llama"), std::string::npos) << r.out;
  for (const char* type : {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"})
    EXPECT_NE(r.out.find(type), std::string::npos) << type;
}

TEST(Cli, ConvertInfoVerifyTheDefaultModel) {
  KILN_REQUIRE_SMOLLM2(gguf);
  TempDir dir;
  const std::string out = dir.file("smol.kiln");
  auto r = run_kiln({"convert", gguf, "-o", out, "--type", "int8", "--group-size", "32"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.empty()) << "progress and notes go to stderr";
  r = run_kiln({"info", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* fact : {"architecture  llama", "layers 30, dim 576, heads 9 (kv 3)", "byte-level BPE (49152 tokens",
                           "int8", "tied embeddings"})
    EXPECT_NE(r.out.find(fact), std::string::npos) << fact << "\n" << r.out;
  r = run_kiln({"verify", out});
  EXPECT_EQ(r.exit_code, 0) << r.err;

  expect_clean_error(run_kiln({"convert", gguf, "-o", out}), "use --force");
  // -v: a line per tensor, the GGUF's own types (Q4_1 matrices, a Q8_0 embedding, F32 norms) to the stored.
  r = run_kiln({"convert", gguf, "-o", out, "--force", "--type", "f16", "-v"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (const char* line : {"token_embd.weight Q8_0 -> f16 [49152, 576]\n", "blk.0.attn_qkv.weight Q4_1 -> f16 [960, 576]\n",
                           "blk.29.ffn_down.weight Q4_1 -> f16 [576, 1536]\n", "output_norm.weight F32 -> f32 [576]\n"})
    EXPECT_NE(r.err.find(line), std::string::npos) << line << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1 + 30 * 6 + 1 + 1) << "embedding, 30 layers of 6, norm, 'wrote'";
  EXPECT_NE(run_kiln({"info", out}).out.find("f16"), std::string::npos);
}

TEST(Cli, BadInputGivesOneLineErrors) {
  TempDir dir;
  expect_clean_error(run_kiln({"info", dir.file("absent.kiln")}), "cannot open");
  expect_clean_error(run_kiln({"info"}), "give the .kiln file");
  expect_clean_error(run_kiln({"convert", dir.file("absent.gguf"), "-o", dir.file("x.kiln")}), "cannot open");
  expect_clean_error(run_kiln({"convert", dir.file("x.gguf")}), "give the output file");
  {
    std::ofstream(dir.file("garbage.gguf")) << "this is not a model file at all";
    std::ofstream(dir.file("garbage.kiln")) << "this is not a model file at all, but long enough to hold a header? "
                                               "no: the magic is wrong before anything else is read, padding....";
  }
  const auto r = run_kiln({"convert", dir.file("garbage.gguf"), "-o", dir.file("x.kiln")});
  expect_clean_error(r, "garbage.gguf");
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.kiln")));
  expect_clean_error(run_kiln({"info", dir.file("garbage.kiln")}), "bad magic");
  expect_clean_error(run_kiln({"convert", dir.file("garbage.gguf"), "-o", dir.file("garbage.gguf")}), "is the source");
  expect_clean_error(run_kiln({"convert", dir.file("garbage.gguf"), "-o", dir.file("x.kiln"), "--type", "q4"}), "--type");
  expect_clean_error(run_kiln({"convert", dir.file("garbage.gguf"), "-o", dir.path().string()}), "is a folder");
  // Nothing the user had is touched by a failed conversion.
  EXPECT_TRUE(std::filesystem::exists(dir.file("garbage.gguf")));
}

TEST(Cli, VerifyNamesADamagedTensor) {
  KILN_REQUIRE_SMOLLM2(gguf);
  TempDir dir;
  const std::string out = dir.file("smol.kiln");
  ASSERT_EQ(run_kiln({"convert", gguf, "-o", out, "--type", "int8"}).exit_code, 0);
  {
    std::fstream file(out, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(-100, std::ios::end);  // inside the last tensor's data
    file.put('\x7f');
  }
  const auto r = run_kiln({"verify", out});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("does not match its checksum"), std::string::npos) << r.err;
}

// `kiln convert GGUF -o OUT --type f32` in a child process, returned once its temp file exists (within a
// minute); the caller signals or waits for it.
pid_t start_conversion_with_temp_file(const std::string& gguf, const std::string& out) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl(KILN_BINARY, KILN_BINARY, "convert", gguf.c_str(), "-o", out.c_str(), "--type", "f32", "-q", nullptr);
    ::_exit(127);
  }
  const std::string partial = partial_path(out, pid);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    std::error_code ec;
    if (std::filesystem::exists(partial, ec)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pid;
}

TEST(Cli, KilledConversionLeavesNoModelAndTheNextRunCleansUp) {
  KILN_REQUIRE_SMOLLM2(gguf);
  TempDir dir;
  const std::string out = dir.file("smol.kiln");
  const pid_t pid = start_conversion_with_temp_file(gguf, out);
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  EXPECT_FALSE(std::filesystem::exists(out));

  const auto r = run_kiln({"convert", gguf, "-o", out, "--type", "int8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++entries;
  EXPECT_EQ(entries, 1u) << "a temp file was left behind";
}

// Ctrl-C mid-conversion leaves nothing behind. On a loaded machine the conversion (about a second) can win
// the race against the signal; then the finished file must be whole and alone, and the test tries again,
// until a signal lands mid-write.
TEST(Cli, InterruptedConversionRemovesItsTempFile) {
  KILN_REQUIRE_SMOLLM2(gguf);
  bool interrupted = false;
  for (int attempt = 0; attempt < 5 && !interrupted; ++attempt) {
    TempDir dir;
    const std::string out = dir.file("smol.kiln");
    const pid_t pid = start_conversion_with_temp_file(gguf, out);
    ::kill(pid, SIGINT);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (std::filesystem::exists(out)) {  // the signal came after the rename
      EXPECT_EQ(run_kiln({"verify", out}).exit_code, 0) << "attempt " << attempt;
      EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1) << "attempt " << attempt;
      continue;
    }
    EXPECT_TRUE(WIFSIGNALED(status) || WEXITSTATUS(status) != 0);
    EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
    interrupted = true;
  }
  EXPECT_TRUE(interrupted) << "five conversions finished before the signal reached them";
}

}  // namespace
}  // namespace kiln
