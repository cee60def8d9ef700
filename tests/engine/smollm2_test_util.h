// The real SmolLM2-135M-Instruct for the model tests of every backend: its GGUF converted once per suite,
// and the checks against the independent numpy forward (tests/data/smollm2_reference.json, written by
// tests/engine/make_smollm2_reference.py), each run on the backend it is given.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "convert/conversion.h"
#include "convert/from_gguf.h"
#include "engine/backend.h"
#include "engine/generator.h"
#include "engine/perplexity.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/model_paths.h"
#include "tokenizer/tokenizer.h"

namespace kiln::testing {

// The GGUF converted to one .kiln file per dtype, in a folder removed with the object.
class SmolLM2Files {
 public:
  explicit SmolLM2Files(std::initializer_list<DType> dtypes) {
    const GgufFile gguf = GgufFile::open(smollm2_gguf_path());
    for (DType dtype : dtypes) {
      ConvertOptions options;
      options.weight_dtype = dtype;
      write_conversion(conversion_from_gguf(gguf), path(dtype), options);
    }
  }
  std::string path(DType dtype) const { return dir_.file(std::string(dtype_name(dtype)) + ".kiln"); }

 private:
  TempDir dir_;
};

// For a suite's SetUpTestSuite: the files, or nullptr when the model cache lacks the GGUF (or `runnable`
// is false: no GPU for a GPU suite), in which case each test skips itself with smollm2_missing().
inline std::unique_ptr<SmolLM2Files> convert_smollm2(std::initializer_list<DType> dtypes, bool runnable = true) {
  if (!runnable || smollm2_gguf_path().empty()) return nullptr;
  return std::make_unique<SmolLM2Files>(dtypes);
}

inline std::string smollm2_missing() {
  return "SmolLM2 GGUF not found under " + model_cache_dir() + ": run scripts/test";
}

// Parsed once and kept: callers range over its members, which a returned temporary would free.
inline const nlohmann::json& smollm2_reference() {
  static const nlohmann::json reference = [] {
    std::ifstream in(std::string(KILN_SOURCE_DIR) + "/tests/data/smollm2_reference.json");
    return nlohmann::json::parse(in);
  }();
  return reference;
}

// Bounds per dtype: f16 only rounds the (already 4-bit) weights; int8 adds group quantization (and on the
// CPU the activations' quantization per row).
inline void expect_perplexity_matches_reference(Backend& backend, const Tokenizer& tokenizer, DType dtype) {
  const auto& ref = smollm2_reference();
  std::ifstream in(std::string(KILN_SOURCE_DIR) + "/" + ref["text"].get<std::string>(), std::ios::binary);
  const std::string text{std::istreambuf_iterator<char>(in), {}};
  const auto tokens = tokenizer.encode(text, false, false);
  ASSERT_EQ(int64_t(tokens.size()), ref["n_text_tokens"].get<int64_t>());
  const auto result = perplexity(backend, tokens, ref["n_ctx"], -1, 0);
  const double expected = ref["perplexity"];
  EXPECT_NEAR(result.perplexity, expected, expected * (dtype == DType::F16 ? 0.01 : 0.03));
}

// f16 must follow the reference token for token; int8 at least for its first words.
inline void expect_greedy_matches_reference(Backend& backend, const Tokenizer& tokenizer, DType dtype) {
  SamplerParams greedy;
  greedy.temperature = 0;
  Generator generator(backend, tokenizer, greedy);
  for (const auto& [prompt, expected] : smollm2_reference()["greedy"].items()) {
    GenerationRequest request;
    request.prompt = tokenizer.encode(prompt, false, false);
    ASSERT_EQ(request.prompt, expected["prompt_ids"].get<std::vector<int32_t>>()) << prompt;
    request.max_tokens = int64_t(expected["greedy_ids"].size());
    std::string text;
    generator.generate(request, [&](std::string_view piece) { text += piece; });
    const std::string expected_text = expected["text"];
    const size_t compare = dtype == DType::F16 ? expected_text.size() : 6;
    EXPECT_EQ(text.substr(0, compare), expected_text.substr(0, compare)) << prompt;
    generator.reset();
  }
}

// Logits here span about ±20. f16 only rounds the weights; int8 moves a logit by up to about 1.
inline void expect_last_logits_match_reference(Backend& backend, const Tokenizer& tokenizer, DType dtype) {
  const auto& ref = smollm2_reference();
  const auto prompt = tokenizer.encode(ref["logits_prompt"].get<std::string>(), false, false);
  std::vector<float> logits(size_t(backend.config().n_vocab));
  backend.forward(prompt.data(), int64_t(prompt.size()), 0, logits.data(), false);
  const auto ids = ref["logits_sample_ids"].get<std::vector<int64_t>>();
  const auto expected = ref["logits_sample"].get<std::vector<float>>();
  double max_error = 0;
  for (size_t i = 0; i < ids.size(); ++i)
    max_error = std::max(max_error, double(std::fabs(logits[size_t(ids[i])] - expected[i])));
  EXPECT_LT(max_error, dtype == DType::F16 ? 0.05 : 1.5);
  EXPECT_EQ(std::max_element(logits.begin(), logits.end()) - logits.begin(), ref["logits_argmax"].get<int64_t>());
}

}  // namespace kiln::testing
