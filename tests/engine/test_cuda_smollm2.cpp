// The real SmolLM2-135M-Instruct on the CUDA backend: against the independent numpy forward
// (tests/data/smollm2_reference.json, the CPU test's bounds) and against the CPU backend (greedy
// tokens), with the decode graph equal to plain launches. Skips itself without a GPU or the GGUF.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "convert/conversion.h"
#include "convert/from_gguf.h"
#include "engine/backend.h"
#include "engine/cuda_backend.h"
#include "engine/generator.h"
#include "engine/kiln_file.h"
#include "engine/perplexity.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/model_paths.h"
#include "tokenizer/tokenizer.h"

namespace kiln {
namespace {

nlohmann::json reference() {
  std::ifstream in(std::string(KILN_SOURCE_DIR) + "/tests/data/smollm2_reference.json");
  return nlohmann::json::parse(in);
}

std::string read_text(const std::string& relative) {
  std::ifstream in(std::string(KILN_SOURCE_DIR) + "/" + relative, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::vector<int32_t> greedy(Backend& backend, const std::vector<int32_t>& prompt, int n_gen,
                            std::vector<float>* all_logits = nullptr) {
  std::vector<float> logits(size_t(backend.config().n_vocab));
  backend.reset();
  backend.forward(prompt.data(), int64_t(prompt.size()), 0, logits.data(), false);
  std::vector<int32_t> out;
  for (int i = 0; i < n_gen; ++i) {
    if (all_logits) all_logits->insert(all_logits->end(), logits.begin(), logits.end());
    const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    backend.forward(&next, 1, int64_t(prompt.size()) + i, logits.data(), false);
  }
  return out;
}

// Converts the GGUF once per dtype for the whole suite.
class CudaSmolLM2 : public ::testing::TestWithParam<DType> {
 protected:
  static void SetUpTestSuite() {
    const std::string gguf_path = testing::smollm2_gguf_path();
    if (gguf_path.empty() || !cuda::device_available()) return;
    dir_ = new testing::TempDir;
    const GgufFile gguf = GgufFile::open(gguf_path);
    for (DType dtype : {DType::F16, DType::I8}) {
      ConvertOptions options;
      options.weight_dtype = dtype;
      write_conversion(conversion_from_gguf(gguf), path(dtype), options);
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string path(DType dtype) { return dir_->file(std::string(dtype_name(dtype)) + ".kiln"); }
  void SetUp() override {
    KILN_REQUIRE_GPU();
    if (!dir_) GTEST_SKIP() << "SmolLM2 GGUF not found under " << testing::model_cache_dir() << ": run scripts/test";
    file_ = std::make_unique<KilnFile>(KilnFile::open(path(GetParam())));
    tokenizer_ = make_tokenizer(file_->tokenizer_data());
    BackendOptions options;
    options.n_ctx = 256;
    backend_ = make_cuda_backend(*file_, options);
  }
  double perplexity_tolerance() const { return GetParam() == DType::F16 ? 0.01 : 0.03; }

  static testing::TempDir* dir_;
  std::unique_ptr<KilnFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Backend> backend_;
};
testing::TempDir* CudaSmolLM2::dir_ = nullptr;

TEST_P(CudaSmolLM2, PerplexityMatchesTheNumpyReference) {
  const auto ref = reference();
  const auto tokens = tokenizer_->encode(read_text(ref["text"]), false, false);
  ASSERT_EQ(int64_t(tokens.size()), ref["n_text_tokens"].get<int64_t>());
  const auto result = perplexity(*backend_, tokens, ref["n_ctx"], -1, 0);
  const double expected = ref["perplexity"];
  EXPECT_NEAR(result.perplexity, expected, expected * perplexity_tolerance());
}

TEST_P(CudaSmolLM2, GreedyContinuationsMatchTheReference) {
  const auto ref = reference();
  SamplerParams greedy_params;
  greedy_params.temperature = 0;
  Generator generator(*backend_, *tokenizer_, greedy_params);
  for (const auto& [prompt, expected] : ref["greedy"].items()) {
    GenerationRequest request;
    request.prompt = tokenizer_->encode(prompt, false, false);
    const auto expected_ids = expected["greedy_ids"].get<std::vector<int32_t>>();
    request.max_tokens = int64_t(expected_ids.size());
    std::string text;
    generator.generate(request, [&](std::string_view piece) { text += piece; });
    // f16 must follow the reference token for token; int8 at least for its first words (as on the CPU).
    const std::string expected_text = expected["text"];
    const size_t compare = GetParam() == DType::F16 ? expected_text.size() : 6;
    EXPECT_EQ(text.substr(0, compare), expected_text.substr(0, compare)) << prompt;
    generator.reset();
  }
}

// The CPU and CUDA backends pick the same tokens: all 32 with f16 weights; with int8 the CPU also
// quantizes activations, so only the first 4 are required to agree.
TEST_P(CudaSmolLM2, GreedyTokensEqualTheCpu) {
  const auto ref = reference();
  BackendOptions options;
  options.n_ctx = 256;
  auto cpu = make_cpu_backend(*file_, options);
  for (const auto& [prompt, expected] : ref["greedy"].items()) {
    const auto ids = tokenizer_->encode(prompt, false, false);
    const auto on_gpu = greedy(*backend_, ids, 32), on_cpu = greedy(*cpu, ids, 32);
    const size_t compare = GetParam() == DType::F16 ? on_cpu.size() : 4;
    EXPECT_EQ(std::vector<int32_t>(on_gpu.begin(), on_gpu.begin() + long(compare)),
              std::vector<int32_t>(on_cpu.begin(), on_cpu.begin() + long(compare)))
        << prompt;
  }
}

TEST_P(CudaSmolLM2, LastLogitsMatchTheReference) {
  const auto ref = reference();
  const auto prompt = tokenizer_->encode(ref["logits_prompt"].get<std::string>(), false, false);
  std::vector<float> logits(size_t(backend_->config().n_vocab));
  backend_->forward(prompt.data(), int64_t(prompt.size()), 0, logits.data(), false);
  const auto ids = ref["logits_sample_ids"].get<std::vector<int64_t>>();
  const auto expected = ref["logits_sample"].get<std::vector<float>>();
  double max_error = 0;
  for (size_t i = 0; i < ids.size(); ++i)
    max_error = std::max(max_error, double(std::fabs(logits[size_t(ids[i])] - expected[i])));
  // The CPU test's bounds: logits span about +-20; int8 moves a logit by up to about 1.
  EXPECT_LT(max_error, GetParam() == DType::F16 ? 0.05 : 1.5);
  EXPECT_EQ(std::max_element(logits.begin(), logits.end()) - logits.begin(), ref["logits_argmax"].get<int64_t>());
}

TEST_P(CudaSmolLM2, GraphDecodeEqualsLaunches) {
  BackendOptions options;
  options.n_ctx = 256;
  CudaOptions launches;
  launches.use_graph = false;
  auto without = make_cuda_backend(*file_, options, launches);
  const auto ids = tokenizer_->encode("The capital of France is", false, false);
  std::vector<float> a, b;
  EXPECT_EQ(greedy(*backend_, ids, 64, &a), greedy(*without, ids, 64, &b));
  ASSERT_EQ(a.size(), b.size());
  EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin())) << "graph replay and launches differ";
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaSmolLM2, ::testing::Values(DType::F16, DType::I8),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

}  // namespace
}  // namespace kiln
