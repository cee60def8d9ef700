// The real SmolLM2-135M-Instruct on the CPU backend against an independent numpy forward pass
// (tests/engine/make_smollm2_reference.py): perplexity, greedy continuations and logits, on one rank and
// split over ranks (tensor parallelism).
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "engine/backend.h"
#include "engine/kiln_file.h"
#include "engine/tensor_parallel_backend.h"
#include "tests/engine/smollm2_test_util.h"
#include "tokenizer/tokenizer.h"

namespace kiln {
namespace {

// The GGUF converted once per dtype for every suite of this binary; nullptr without the GGUF.
const testing::SmolLM2Files* smollm2_files() {
  static const std::unique_ptr<testing::SmolLM2Files> files = testing::convert_smollm2({DType::F16, DType::I8});
  return files.get();
}

// A backend over the converted file of `dtype`, split over `tensor_parallel` ranks.
class SmolLM2Backend {
 protected:
  void open(DType dtype, int tensor_parallel) {
    file_ = std::make_unique<KilnFile>(KilnFile::open(smollm2_files()->path(dtype)));
    tokenizer_ = make_tokenizer(file_->tokenizer_data());
    BackendOptions options;
    options.n_ctx = 256;
    backend_ = make_cpu_tensor_parallel_backend(*file_, options, tensor_parallel);
  }

  std::unique_ptr<KilnFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Backend> backend_;
};

class SmolLM2 : public ::testing::TestWithParam<DType>, protected SmolLM2Backend {
 protected:
  void SetUp() override {
    if (!smollm2_files()) GTEST_SKIP() << testing::smollm2_missing();
    open(GetParam(), 1);
  }
};

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

// -tp 2 splits the 3 key/value groups unevenly (1 and 2, with 3 and 6 query heads), -tp 3 one each.
struct Split {
  DType dtype;
  int tensor_parallel;
};

class TensorParallelSmolLM2 : public ::testing::TestWithParam<Split>, protected SmolLM2Backend {
 protected:
  void SetUp() override {
    if (!smollm2_files()) GTEST_SKIP() << testing::smollm2_missing();
    open(GetParam().dtype, GetParam().tensor_parallel);
  }
};

TEST_P(TensorParallelSmolLM2, GreedyContinuationsMatchTheReference) {
  testing::expect_greedy_matches_reference(*backend_, *tokenizer_, GetParam().dtype);
}

TEST_P(TensorParallelSmolLM2, LastLogitsMatchTheReference) {
  testing::expect_last_logits_match_reference(*backend_, *tokenizer_, GetParam().dtype);
}

INSTANTIATE_TEST_SUITE_P(Splits, TensorParallelSmolLM2,
                         ::testing::Values(Split{DType::F16, 2}, Split{DType::I8, 3}), [](const auto& info) {
                           return std::string(dtype_name(info.param.dtype)) + "_tp" +
                                  std::to_string(info.param.tensor_parallel);
                         });

}  // namespace
}  // namespace kiln
