// The CPU forward against Hugging Face transformers (float64 reference logits of tiny random models,
// tests/engine/make_tiny_models.py), in f32 and in every quantized storage dtype. Llama models cover GQA,
// MQA, tied and untied heads and rope variants; Mistral a sliding window, Qwen2 QKV-only biases; one model
// each of GPT-2, GPT-NeoX, GPT-J and BLOOM covers LayerNorm, biases, learned positions, partial rotary in
// both styles, parallel residuals and ALiBi; two OPT models cover ReLU, offset positions, post-norm blocks
// and a projected embedding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/backend.h"
#include "engine/weights.h"
#include "tests/engine/tiny_model.h"

namespace kiln::test {
namespace {

const char* const kModels[] = {"llama_gqa_tied", "llama_mha", "llama_rope_linear", "mistral_swa", "qwen2", "gpt2",
                               "gptneox",        "gptj",      "bloom",             "opt",         "opt_post_ln"};

struct Comparison {
  float kept_max_abs = 0;  // over the positions whose full logits the reference keeps
  float stat_max_abs = 0;  // per-position max logit and log-sum-exp, over every position
  float argmax_gap = 0;    // largest (our max - our logit at the reference's argmax): 0 when top-1 agrees
  int top1_agree = 0;
  int n_positions = 0;
};

// logits: [n, n_vocab]
Comparison compare(const PromptReference& ref, const std::vector<float>& logits, int64_t n_vocab) {
  Comparison c;
  c.kept_max_abs = kept_logit_error(ref, logits, n_vocab);
  c.n_positions = int(ref.tokens.size());
  for (int p = 0; p < c.n_positions; ++p) {
    const float* row = logits.data() + p * n_vocab;
    const float* best = std::max_element(row, row + n_vocab);
    double sum = 0;
    for (int64_t v = 0; v < n_vocab; ++v) sum += std::exp(double(row[v]) - *best);
    const float lse = float(*best + std::log(sum));
    c.stat_max_abs = std::max({c.stat_max_abs, std::fabs(*best - ref.max[size_t(p)]),
                               std::fabs(lse - ref.logsumexp[size_t(p)])});
    c.argmax_gap = std::max(c.argmax_gap, *best - row[ref.argmax[size_t(p)]]);
    c.top1_agree += (best - row) == ref.argmax[size_t(p)];
  }
  return c;
}

class Parity : public ::testing::TestWithParam<const char*> {};

// f32 weights: the only differences from the float64 reference are f32 rounding, bounded by 1e-4 on logits
// of magnitude up to ~4. max_batch 48 runs the 320-token prompt in chunks.
TEST_P(Parity, F32MatchesHuggingFace) {
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  for (int64_t max_batch : {512, 48}) {
    BackendOptions options;
    options.n_ctx = 512;
    options.n_threads = 2;
    options.max_batch = max_batch;
    auto backend = make_cpu_backend(model.config, weights, options);
    for (const auto& ref : refs) {
      SCOPED_TRACE(testing::Message() << "max_batch " << max_batch << ", prompt of " << ref.tokens.size());
      const Comparison c = compare(ref, forward_all(*backend, ref.tokens), model.config.n_vocab);
      EXPECT_LE(c.kept_max_abs, 1e-4f);
      EXPECT_LE(c.stat_max_abs, 1e-4f);
      EXPECT_LE(c.argmax_gap, 2e-4f);  // top-1 agrees up to near-ties
    }
  }
}

struct QuantCase {
  DType dtype;
  float max_abs;     // logits bound vs the f32 reference
  float min_top1;    // share of positions whose top-1 token matches
};

// Observed on the Llama models (the others stay below): f16 max abs 4e-3, top-1 >= 361/362; bf16 4e-2,
// >= 356/362; int8 (group 32, 16 where a row has 48 columns) 1e-1 from the weights alone and 1.8e-1 with
// the matmul's on-the-fly int8 activations, >= 338/362. The bounds leave about 2x. The models' top-1
// margins are as small as 2e-3, so rounding flips a few near-ties.
TEST_P(Parity, QuantizedWeightsStayClose) {
  const TinyModel model = load_tiny_model(GetParam());
  const auto refs = load_reference(GetParam());
  for (const QuantCase& q : {QuantCase{DType::F16, 1e-2f, 0.98f}, QuantCase{DType::BF16, 8e-2f, 0.95f},
                             QuantCase{DType::I8, 3.5e-1f, 0.9f}}) {
    SCOPED_TRACE(testing::Message() << "dtype " << dtype_name(q.dtype));
    const TensorStore store(model, q.dtype, 32);
    const Weights weights = bind_weights(model.config, store.lookup());
    BackendOptions options;
    options.n_ctx = 512;
    options.n_threads = 2;
    auto backend = make_cpu_backend(model.config, weights, options);
    float worst = 0;
    int agree = 0, total = 0;
    for (const auto& ref : refs) {
      const Comparison c = compare(ref, forward_all(*backend, ref.tokens), model.config.n_vocab);
      worst = std::max({worst, c.kept_max_abs, c.stat_max_abs});
      agree += c.top1_agree;
      total += c.n_positions;
    }
    std::printf("%s %s: max abs %.2e, top-1 %d/%d\n", GetParam(), std::string(dtype_name(q.dtype)).c_str(), worst,
                agree, total);
    EXPECT_LE(worst, q.max_abs);
    EXPECT_GE(float(agree) / float(total), q.min_top1);
  }
}

// Prefill of k tokens (cache only), then one token at a time, gives the logits of one pass over all tokens.
TEST_P(Parity, DecodeMatchesOnePass) {
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  const int64_t n_vocab = model.config.n_vocab;
  BackendOptions options;
  options.n_ctx = 512;
  options.n_threads = 2;
  options.max_batch = 64;
  auto backend = make_cpu_backend(model.config, weights, options);
  for (const auto& ref : refs) {
    const auto& tokens = ref.tokens;
    const int64_t n = int64_t(tokens.size());
    const std::vector<float> all = forward_all(*backend, tokens);

    // Prefill with last-token logits only equals the last row.
    std::vector<float> last(static_cast<size_t>(n_vocab));
    backend->forward(tokens.data(), n, 0, last.data(), false);
    EXPECT_EQ(backend->n_past(), n);
    for (int64_t v = 0; v < n_vocab; ++v) ASSERT_NEAR(last[size_t(v)], all[size_t((n - 1) * n_vocab + v)], 1e-5f);

    const int64_t k = std::max<int64_t>(1, n - 20);
    backend->reset();
    backend->forward(tokens.data(), k, 0, nullptr, false);
    EXPECT_EQ(backend->n_past(), k);
    float worst = 0;
    for (int64_t p = k; p < n; ++p) {
      backend->forward(tokens.data() + p, 1, p, last.data(), false);
      for (int64_t v = 0; v < n_vocab; ++v)
        worst = std::max(worst, std::fabs(last[size_t(v)] - all[size_t(p * n_vocab + v)]));
    }
    EXPECT_LE(worst, 1e-5f) << "prompt of " << n;

    // Rewinding to an earlier position recomputes from there.
    if (n > 2) {
      backend->forward(tokens.data() + 1, 1, 1, last.data(), false);
      EXPECT_EQ(backend->n_past(), 2);
      for (int64_t v = 0; v < n_vocab; ++v) ASSERT_NEAR(last[size_t(v)], all[size_t(n_vocab + v)], 1e-5f);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, Parity, ::testing::ValuesIn(kModels));

}  // namespace
}  // namespace kiln::test
