// The real SmolLM2-135M-Instruct in the batched CUDA backend: greedy tokens equal the single-sequence CUDA
// backend's (f32 weights, so that both sum in f32 and only the order differs); with f16 weights each prompt
// decodes alike, tokens and logits bit for bit, alone and beside the others, and its logits stay within the
// f16 rounding of the CPU batch backend's. Skips itself without a GPU or the GGUF (scripts/test fetches it).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/cuda_backend.h"
#include "engine/cuda_batch_backend.h"
#include "engine/kiln_file.h"
#include "tests/engine/batch_backend_test_util.h"
#include "tests/engine/smollm2_test_util.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace kiln::test {
namespace {

// Chat-like, counting and plain prompts of 6 to 28 tokens.
const std::vector<std::vector<int32_t>> kPrompts = {
    {1, 504, 3458, 282, 253, 1345, 28, 2030},
    {1, 9690, 198, 2683, 314, 260, 3575, 282, 4649, 47, 2, 198},
    {1, 504, 1088, 314, 2030, 30},
    {1, 11, 15, 11, 16, 11, 17, 11, 18, 11, 19, 11, 20, 11, 21, 11, 22, 11, 23, 11, 24, 11, 25, 11, 26, 11, 27, 11},
};
constexpr int64_t kNew = 32;

BatchBackendOptions batch_options(int64_t max_sequences) {
  BatchBackendOptions options;
  options.n_ctx = 256;
  options.max_sequences = max_sequences;
  options.max_step_tokens = 16;  // the long prompt runs in two chunks
  options.kv_bytes = uint64_t(256) << 20;
  options.n_threads = 0;
  return options;
}

// Converts the GGUF once per dtype for the whole suite.
class CudaBatchSmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    files_ = testing::convert_smollm2({DType::F32, DType::F16}, cuda::device_available());
  }
  static void TearDownTestSuite() { files_.reset(); }
  void SetUp() override {
    KILN_REQUIRE_GPU();
    if (!files_) GTEST_SKIP() << testing::smollm2_missing();
  }
  static std::string path(DType dtype) { return files_->path(dtype); }

  static std::unique_ptr<testing::SmolLM2Files> files_;
};
std::unique_ptr<testing::SmolLM2Files> CudaBatchSmolLM2::files_;

TEST_F(CudaBatchSmolLM2, GreedyTokensEqualTheSingleSequenceBackend) {
  const KilnFile file = KilnFile::open(path(DType::F32));
  BackendOptions options;
  options.n_ctx = 256;
  auto single = make_cuda_backend(file, options);
  auto batch = make_cuda_batch_backend(file, batch_options(4));
  const auto got = greedy_batched(*batch, kPrompts, kNew, 16);
  for (size_t s = 0; s < kPrompts.size(); ++s)
    EXPECT_EQ(got[s], greedy_single(*single, kPrompts[s], kNew)) << "prompt " << s;
}

TEST_F(CudaBatchSmolLM2, PromptsDecodeAsAloneAndAsOnTheCpu) {
  const KilnFile file = KilnFile::open(path(DType::F16));
  const int64_t n_vocab = file.config().n_vocab;
  auto batch = make_cuda_batch_backend(file, batch_options(4));
  Logits batched_logits;
  const auto batched = greedy_batched(*batch, kPrompts, kNew, 16, &batched_logits);
  for (size_t s = 0; s < kPrompts.size(); ++s) {
    auto alone = make_cuda_batch_backend(file, batch_options(1));
    Logits alone_logits;
    EXPECT_EQ(greedy_batched(*alone, {kPrompts[s]}, kNew, 16, &alone_logits)[0], batched[s]) << "prompt " << s;
    EXPECT_EQ(std::memcmp(alone_logits[0].data(), batched_logits[s].data(), alone_logits[0].size() * sizeof(float)), 0)
        << "prompt " << s;
  }
  // The CPU batch backend on the same tokens: the first generated token's logits within f16 rounding of the
  // activations (logits span about +-20; the single-sequence tests allow 0.05 against the reference).
  auto cpu = make_cpu_batch_backend(file, batch_options(4));
  for (size_t s = 0; s < kPrompts.size(); ++s) {
    ASSERT_TRUE(cpu->reserve(int32_t(s), int64_t(kPrompts[s].size())));
    std::vector<BatchToken> rows;
    for (size_t p = 0; p < kPrompts[s].size(); ++p) rows.push_back({kPrompts[s][p], int32_t(s), int32_t(p)});
    std::vector<float> want(static_cast<size_t>(n_vocab));
    for (size_t start = 0; start < rows.size(); start += 16) {
      const int64_t n = std::min<int64_t>(16, int64_t(rows.size() - start));
      const int32_t last = int32_t(n - 1);
      cpu->forward(rows.data() + start, n, &last, 1, want.data());
    }
    float diff = 0;
    for (int64_t v = 0; v < n_vocab; ++v)
      diff = std::max(diff, std::fabs(want[size_t(v)] - batched_logits[s][size_t(v)]));
    EXPECT_LT(diff, 0.1f) << "prompt " << s;
  }
}

}  // namespace
}  // namespace kiln::test
