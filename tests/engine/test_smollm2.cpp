// The real SmolLM2-135M-Instruct on the CPU backend against an independent numpy forward pass
// (tests/engine/make_smollm2_reference.py): perplexity, greedy continuations and logits.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "convert/conversion.h"
#include "convert/from_gguf.h"
#include "engine/backend.h"
#include "engine/generator.h"
#include "engine/kiln_file.h"
#include "engine/perplexity.h"
#include "tests/convert/kiln_file_fixture.h"
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

// Converts the GGUF once per dtype for the whole suite.
class SmolLM2 : public ::testing::TestWithParam<DType> {
 protected:
  static void SetUpTestSuite() {
    const std::string gguf_path = testing::smollm2_gguf_path();
    if (gguf_path.empty()) return;
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
    if (!dir_) GTEST_SKIP() << "SmolLM2 GGUF not found under " << testing::model_cache_dir() << ": run scripts/test";
    file_ = std::make_unique<KilnFile>(KilnFile::open(path(GetParam())));
    tokenizer_ = make_tokenizer(file_->tokenizer_data());
    BackendOptions options;
    options.n_ctx = 256;
    backend_ = make_cpu_backend(*file_, options);
  }
  // Bounds per dtype: f16 only rounds the (already 4-bit) weights; int8 adds group quantization.
  double perplexity_tolerance() const { return GetParam() == DType::F16 ? 0.01 : 0.03; }

  static testing::TempDir* dir_;
  std::unique_ptr<KilnFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Backend> backend_;
};
testing::TempDir* SmolLM2::dir_ = nullptr;

TEST_P(SmolLM2, PerplexityMatchesTheNumpyReference) {
  const auto ref = reference();
  const auto tokens = tokenizer_->encode(read_text(ref["text"]), false, false);
  ASSERT_EQ(int64_t(tokens.size()), ref["n_text_tokens"].get<int64_t>());
  const auto result = perplexity(*backend_, tokens, ref["n_ctx"], -1, 0);
  const double expected = ref["perplexity"];
  EXPECT_NEAR(result.perplexity, expected, expected * perplexity_tolerance());
}

TEST_P(SmolLM2, GreedyContinuationsMatchTheReference) {
  const auto ref = reference();
  SamplerParams greedy;
  greedy.temperature = 0;
  Generator generator(*backend_, *tokenizer_, greedy);
  for (const auto& [prompt, expected] : ref["greedy"].items()) {
    GenerationRequest request;
    request.prompt = tokenizer_->encode(prompt, false, false);
    ASSERT_EQ(request.prompt, expected["prompt_ids"].get<std::vector<int32_t>>()) << prompt;
    const auto expected_ids = expected["greedy_ids"].get<std::vector<int32_t>>();
    request.max_tokens = int64_t(expected_ids.size());
    std::string text;
    generator.generate(request, [&](std::string_view piece) { text += piece; });
    // f16 must follow the reference token for token; int8 at least for its first words.
    const std::string expected_text = expected["text"];
    const size_t compare = GetParam() == DType::F16 ? expected_text.size() : 6;
    EXPECT_EQ(text.substr(0, compare), expected_text.substr(0, compare)) << prompt;
    generator.reset();
  }
}

TEST_P(SmolLM2, LastLogitsMatchTheReference) {
  const auto ref = reference();
  const auto prompt = tokenizer_->encode(ref["logits_prompt"].get<std::string>(), false, false);
  std::vector<float> logits(size_t(backend_->config().n_vocab));
  backend_->forward(prompt.data(), int64_t(prompt.size()), 0, logits.data(), false);
  const auto ids = ref["logits_sample_ids"].get<std::vector<int64_t>>();
  const auto expected = ref["logits_sample"].get<std::vector<float>>();
  double max_error = 0;
  for (size_t i = 0; i < ids.size(); ++i) max_error = std::max(max_error, double(std::fabs(logits[size_t(ids[i])] - expected[i])));
  // Logits here span about ±20. f16 only rounds the weights; int8 quantizes weights per group and the
  // activations per row (the VNNI path), which moves a logit by up to about 1.
  EXPECT_LT(max_error, GetParam() == DType::F16 ? 0.05 : 1.5);
  EXPECT_EQ(std::max_element(logits.begin(), logits.end()) - logits.begin(), ref["logits_argmax"].get<int64_t>());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SmolLM2, ::testing::Values(DType::F16, DType::I8),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

}  // namespace
}  // namespace kiln
