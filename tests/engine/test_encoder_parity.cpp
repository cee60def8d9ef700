// The CPU forward of a bidirectional encoder (the tiny BERT of tests/engine/make_tiny_models.py) against
// transformers' float64 last hidden state: token-type and position embeddings, the embedding LayerNorm,
// post-norm blocks, exact GELU and no LM head, in f32 and in the quantized storage dtypes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/weights.h"
#include "tests/engine/tiny_model.h"

namespace kiln::test {
namespace {

// The largest |ours - reference| over every hidden value of every prompt.
float max_error(Backend& backend, const std::vector<HiddenReference>& refs) {
  const int64_t dim = backend.config().dim;
  float worst = 0;
  for (const auto& ref : refs) {
    const auto n = int64_t(ref.tokens.size());
    std::vector<float> hidden(size_t(n * dim));
    backend.reset();
    backend.forward(ref.tokens.data(), n, 0, hidden.data(), true);
    for (size_t i = 0; i < hidden.size(); ++i) worst = std::max(worst, std::fabs(hidden[i] - ref.hidden[i]));
  }
  return worst;
}

TEST(EncoderParity, ConfigDescribesAnEncoder) {
  const TinyModel model = load_tiny_model("bert");
  EXPECT_FALSE(model.config.causal);
  EXPECT_FALSE(model.config.lm_head);
  EXPECT_TRUE(model.config.post_norm);
  EXPECT_EQ(model.config.output_width(), model.config.dim);
}

// f32: only f32 rounding separates the two (observed 1.5e-6 on LayerNorm outputs of magnitude up to ~4).
TEST(EncoderParity, F32MatchesHuggingFace) {
  const TinyModel model = load_tiny_model("bert");
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  auto backend = make_cpu_backend(model.config, weights, tiny_backend_options(512));
  const auto refs = load_hidden_reference("bert");
  ASSERT_GE(refs.back().tokens.size(), 300u);
  const float worst = max_error(*backend, refs);
  std::printf("bert f32: max abs %.2e\n", worst);
  EXPECT_LE(worst, 2e-5f);
}

// Observed: f16 1.9e-3, bf16 1.3e-2, int8 6.7e-2 (group 32); the bounds leave about 2x.
TEST(EncoderParity, QuantizedWeightsStayClose) {
  const TinyModel model = load_tiny_model("bert");
  const auto refs = load_hidden_reference("bert");
  for (const auto& [dtype, bound] : {std::pair{DType::F16, 1e-2f}, std::pair{DType::BF16, 3e-2f},
                                     std::pair{DType::I8, 1.5e-1f}}) {
    const TensorStore store(model, dtype, 32);
    const Weights weights = bind_weights(model.config, store.lookup());
    auto backend = make_cpu_backend(model.config, weights, tiny_backend_options(512));
    const float worst = max_error(*backend, refs);
    std::printf("bert %s: max abs %.2e\n", std::string(dtype_name(dtype)).c_str(), worst);
    EXPECT_LE(worst, bound) << dtype_name(dtype);
  }
}

// Attending both ways needs the whole input at once: a longer input than one batch, or a second call
// that continues the first, is refused rather than computed wrongly; so is asking an encoder for the last
// token's logits (generation).
TEST(EncoderParity, RefusesPiecewiseInput) {
  const TinyModel model = load_tiny_model("bert");
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  auto backend = make_cpu_backend(model.config, weights, tiny_backend_options(16));
  const auto refs = load_hidden_reference("bert");
  const auto& tokens = refs[1].tokens;
  std::vector<float> hidden(tokens.size() * size_t(model.config.dim));
  EXPECT_THROW(backend->forward(tokens.data(), int64_t(tokens.size()), 0, hidden.data(), true), Error);
  backend->forward(tokens.data(), 4, 0, hidden.data(), true);
  EXPECT_THROW(backend->forward(tokens.data() + 4, 4, 4, hidden.data(), true), Error);
  EXPECT_THROW(backend->forward(tokens.data(), 4, 0, hidden.data(), false), Error);
}

// A missing token-type table is named when the weights are bound.
TEST(EncoderParity, BindingChecksEncoderTensors) {
  const TinyModel model = load_tiny_model("bert");
  TensorStore store(model, DType::F32);
  store.erase("token_type_embd.weight");
  try {
    (void)bind_weights(model.config, store.lookup());
    ADD_FAILURE() << "bound without token_type_embd.weight";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token_type_embd.weight"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln::test
