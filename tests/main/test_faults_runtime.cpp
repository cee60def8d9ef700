// Faults while a model runs: a context too small for the prompt, invalid UTF-8 in the input, logits that
// go NaN or infinite, and Ctrl-C in every command that runs a model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/kiln_file.h"
#include "engine/nonfinite_check.h"
#include "tests/main/test_faults_util.h"
#include "tokenizer/utf8.h"

namespace kiln {
namespace {

using testing::ProcessResult;
using testing::run_kiln;
using testing::RunningKiln;

void expect_error(const ProcessResult& r, const std::string& part) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find(part), std::string::npos) << r.err;
}

std::string write_text(const testing::TinyModels& models, const std::string& name, const std::string& text) {
  const std::string path = models.dir.file(name);
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(Faults, ContextOverflowIsAClearErrorOrAStop) {
  const testing::TinyModels models;
  // The byte tokenizer makes one token per byte.
  expect_error(run_kiln({"generate", "-m", models.kiln, "-c", "32", "-p", std::string(40, 'a')}),
               "the prompt has 40 tokens but the context holds 32: shorten it or raise -c");
  // A reply that fills the context stops there, and says so.
  ProcessResult r = run_kiln({"generate", "-m", models.kiln, "-c", "32", "-p", "hi", "-n", "100", "--temp", "0"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("generated 31 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("context_full"), std::string::npos) << r.err;
  // In a chat, a message too long for the context is refused and the chat goes on.
  r = run_kiln({"chat", "-m", models.kiln, "-c", "64", "--chat-template", "chatml", "-n", "4", "--temp", "0"},
               std::string(100, 'b') + "\nhi\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("error: this message needs"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("but the context holds 64"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("reply 4 tokens"), std::string::npos) << "the next message is answered: " << r.err;
  expect_error(run_kiln({"perplexity", "-m", models.kiln, "-c", "8", "-f", write_text(models, "t.txt", "abc")}),
               "the perplexity context 8 must be in [16, 8]");
}

// Invalid UTF-8 is defined input: every invalid sequence becomes U+FFFD before tokenizing (as the
// reference tokenizers do), and the output is always valid UTF-8.
TEST(Faults, InvalidUtf8InputIsReplacedAndTheOutputStaysValid) {
  const testing::TinyModels models;
  const std::string invalid = "caf\xC3 \xFF\xFE ok \xE2\x82";
  const ProcessResult bad = run_kiln({"tokenize", "-m", models.kiln, "--ids", invalid});
  const ProcessResult replaced = run_kiln({"tokenize", "-m", models.kiln, "--ids", utf8_sanitize(invalid)});
  ASSERT_EQ(bad.exit_code, 0) << bad.err;
  EXPECT_EQ(bad.out, replaced.out);
  EXPECT_NE(utf8_sanitize(invalid).find("\xEF\xBF\xBD"), std::string::npos);

  // The tiny model writes arbitrary bytes: the stream decoder must still emit valid UTF-8.
  ProcessResult r = run_kiln({"generate", "-m", models.kiln, "-p", invalid, "-n", "64", "--temp", "1", "-s", "3"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(utf8_is_valid(r.out)) << r.out;
  r = run_kiln({"generate", "-m", models.kiln, "-f", write_text(models, "bad.txt", invalid), "-n", "8"});
  EXPECT_EQ(r.exit_code, 0) << r.err;

  const std::string saved = models.dir.file("chat.json");
  r = run_kiln({"chat", "-m", models.kiln, "--chat-template", "chatml", "-n", "16", "-s", "1"},
               invalid + "\n/save " + saved + "\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(utf8_is_valid(r.out));
  std::ifstream in(saved);
  const nlohmann::json session = nlohmann::json::parse(in);
  EXPECT_EQ(session["messages"][0]["content"], utf8_sanitize(invalid));
}

TEST(Faults, NonFiniteLogitsNameTheFirstLayerThatWentBad) {
  const testing::TinyModels models;
  const std::string where = "the first non-finite value appears in 'layer_out' of layer 1";
  ProcessResult r = run_kiln({"generate", "-m", models.nonfinite, "-p", "hello", "-n", "8"});
  expect_error(r, "are not finite");
  expect_error(r, where);
  r = run_kiln({"perplexity", "-m", models.nonfinite, "-c", "16",
                "-f", write_text(models, "text.txt", std::string(64, 'x'))});
  expect_error(r, "the perplexity of chunk 1 is not a number");
  expect_error(r, where);
  r = run_kiln({"chat", "-m", models.nonfinite, "--chat-template", "chatml"}, "hello\nand again\n");
  expect_error(r, where);

  // The same tokens through the sound model: nothing to report.
  const KilnFile file = KilnFile::open(models.kiln);
  EXPECT_FALSE(locate_nonfinite(file, std::vector<int32_t>{104, 105}, 1).has_value());
  const KilnFile broken = KilnFile::open(models.nonfinite);
  const auto site = locate_nonfinite(broken, std::vector<int32_t>{104, 105}, 1);
  ASSERT_TRUE(site.has_value());
  EXPECT_EQ(site->tensor, "layer_out");
  EXPECT_EQ(site->layer, 1);
}

TEST(Faults, FirstNonfiniteFindsNanAndBothInfinities) {
  std::vector<float> values(10, 1.0f);
  EXPECT_EQ(first_nonfinite(values.data(), 10), -1);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    values[7] = bad;
    EXPECT_EQ(first_nonfinite(values.data(), 10), 7);
    EXPECT_THROW(check_logits_finite(values, std::vector<int32_t>{1, 2}), NonFiniteLogits);
  }
  values[7] = std::numeric_limits<float>::max();
  EXPECT_NO_THROW(check_logits_finite(values, std::vector<int32_t>{1}));
}

// Ctrl-C while a model runs: generate and perplexity stop at the next step and exit with 130 after
// printing what they have; chat with piped input leaves with 130. (A second Ctrl-C ends them at once;
// Ctrl-C in convert removes its temporary file: test_cli.)
TEST(Faults, CtrlCEndsGenerateCleanly) {
  const testing::TinyModels models;
  RunningKiln kiln({"generate", "-m", models.kiln, "-c", "100000", "-p", "once", "-n", "-1"});
  ASSERT_TRUE(kiln.wait_for_bytes(64));  // well into the generation
  kiln.signal(SIGINT);
  const ProcessResult r = kiln.finish();
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_NE(r.err.find("| interrupted]"), std::string::npos) << r.err;
  EXPECT_TRUE(!r.out.empty() && r.out.back() == '\n');
  EXPECT_TRUE(utf8_is_valid(r.out));
}

TEST(Faults, CtrlCEndsPerplexityCleanly) {
  const testing::TinyModels models;
  std::string text;
  for (int i = 0; i < 20000; ++i) text += char('a' + (i * 7 + i / 13) % 26);
  RunningKiln kiln({"perplexity", "-m", models.kiln, "-c", "16", "-f", write_text(models, "long.txt", text)});
  ASSERT_TRUE(kiln.wait_for("[2]"));
  kiln.signal(SIGINT);
  const ProcessResult r = kiln.finish();
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_NE(r.err.find("[interrupted after"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("Final estimate"), std::string::npos);
}

TEST(Faults, CtrlCEndsPipedChatCleanly) {
  const testing::TinyModels models;
  RunningKiln kiln({"chat", "-m", models.kiln, "--chat-template", "chatml", "-n", "4"});
  kiln.write("hello\n");
  ASSERT_TRUE(kiln.wait_for("reply 4 tokens", true));  // answered: the Ctrl-C handler is in place
  kiln.signal(SIGINT);
  const ProcessResult r = kiln.finish(10, true);  // stdin stays open: only the Ctrl-C ends it
  EXPECT_EQ(r.exit_code, 130) << r.err;
}

}  // namespace
}  // namespace kiln
