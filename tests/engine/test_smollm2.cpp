// The real SmolLM2-135M-Instruct on the CPU backend against an independent numpy forward pass
// (tests/engine/make_smollm2_reference.py): perplexity, greedy continuations and logits.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "engine/backend.h"
#include "engine/kiln_file.h"
#include "tests/engine/smollm2_test_util.h"
#include "tokenizer/tokenizer.h"

namespace kiln {
namespace {

// Converts the GGUF once per dtype for the whole suite.
class SmolLM2 : public ::testing::TestWithParam<DType> {
 protected:
  static void SetUpTestSuite() { files_ = testing::convert_smollm2({DType::F16, DType::I8}); }
  static void TearDownTestSuite() { files_.reset(); }
  void SetUp() override {
    if (!files_) GTEST_SKIP() << testing::smollm2_missing();
    file_ = std::make_unique<KilnFile>(KilnFile::open(files_->path(GetParam())));
    tokenizer_ = make_tokenizer(file_->tokenizer_data());
    BackendOptions options;
    options.n_ctx = 256;
    backend_ = make_cpu_backend(*file_, options);
  }

  static std::unique_ptr<testing::SmolLM2Files> files_;
  std::unique_ptr<KilnFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Backend> backend_;
};
std::unique_ptr<testing::SmolLM2Files> SmolLM2::files_;

TEST_P(SmolLM2, PerplexityMatchesTheNumpyReference) {
  testing::expect_perplexity_matches_reference(*backend_, *tokenizer_, GetParam());
}

TEST_P(SmolLM2, GreedyContinuationsMatchTheReference) {
  testing::expect_greedy_matches_reference(*backend_, *tokenizer_, GetParam());
}

TEST_P(SmolLM2, LastLogitsMatchTheReference) {
  testing::expect_last_logits_match_reference(*backend_, *tokenizer_, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SmolLM2, ::testing::Values(DType::F16, DType::I8),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

}  // namespace
}  // namespace kiln
