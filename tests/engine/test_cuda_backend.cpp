// The CUDA forward against the CPU forward and the Hugging Face references (tests/data/tiny_*), for
// every family the CPU backend runs (Llama, Mistral, Qwen2, GPT-2, GPT-NeoX, GPT-J, BLOOM, OPT with
// post-norm blocks and a projected embedding, the BERT encoder): f32 logits, every quantized storage
// dtype, greedy tokens, decode against one pass, the captured decode graph against plain launches, and
// the named intermediates. Skips itself without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "convert/quantize.h"
#include "engine/backend.h"
#include "engine/cuda_backend.h"
#include "engine/cuda_forward.h"
#include "engine/error.h"
#include "engine/weights.h"
#include "tests/engine/tiny_model.h"
#include "tests/engine/batch_backend_test_util.h"
#include "tests/engine/batch_test_util.h"
#include "tests/engine/greedy_test_util.h"
#include "tests/engine/top_logits_test_util.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace kiln::test {
namespace {

const char* const kModels[] = {"llama_gqa_tied", "llama_mha", "llama_rope_linear", "mistral_swa", "qwen2", "gpt2",
                               "gptneox",        "gptj",      "bloom",             "opt",         "opt_post_ln"};

// Largest error against the reference's kept logits, and the positions whose top-1 token agrees.
struct Versus {
  float kept_max_abs = 0;
  int top1_agree = 0;
};
Versus versus_reference(const PromptReference& ref, const std::vector<float>& logits, int64_t n_vocab) {
  Versus v;
  v.kept_max_abs = test::kept_logit_error(ref, logits, n_vocab);
  for (size_t p = 0; p < ref.tokens.size(); ++p) {
    const float* row = logits.data() + p * size_t(n_vocab);
    v.top1_agree += (std::max_element(row, row + n_vocab) - row) == ref.argmax[p];
  }
  return v;
}

class CudaParity : public ::testing::TestWithParam<const char*> {};

// f32 weights: both backends are f32 throughout, within 1e-4 of the float64 reference and of each other.
// max_batch 48 runs the 320-token prompt in chunks; 8 runs every chunk through the GEMV path.
TEST_P(CudaParity, F32MatchesCpuAndHuggingFace) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  auto cpu = make_cpu_backend(model.config, weights, tiny_backend_options(512));
  for (int64_t max_batch : {512, 48, 8}) {
    auto gpu = make_cuda_backend(model.config, weights, tiny_backend_options(max_batch));
    for (const auto& ref : refs) {
      SCOPED_TRACE(testing::Message() << "max_batch " << max_batch << ", prompt of " << ref.tokens.size());
      const auto g = forward_all(*gpu, ref.tokens);
      EXPECT_LE(max_abs_difference(g, forward_all(*cpu, ref.tokens)), 1e-4f);
      const Versus v = versus_reference(ref, g, model.config.n_vocab);
      EXPECT_LE(v.kept_max_abs, 1e-4f);
    }
  }
}

struct QuantCase {
  DType dtype;
  float max_abs_ref;  // against the f32 reference (the CPU backend's bounds)
  float max_abs_cpu;  // against the CPU backend with the same weights
  float min_top1;
};

// The GEMM rounds x to f16 (bf16 for bf16 weights) and the CPU's int8 path quantizes activations, so
// the backends part by about the weights' own rounding; the bounds are the CPU test's.
TEST_P(CudaParity, QuantizedWeightsStayClose) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model(GetParam());
  const auto refs = load_reference(GetParam());
  for (const QuantCase& q : {QuantCase{DType::F16, 1e-2f, 1e-2f, 0.98f}, QuantCase{DType::BF16, 8e-2f, 8e-2f, 0.95f},
                             QuantCase{DType::I8, 3.5e-1f, 3.5e-1f, 0.9f}}) {
    SCOPED_TRACE(testing::Message() << "dtype " << dtype_name(q.dtype));
    const TensorStore store(model, q.dtype, 32);
    const Weights weights = bind_weights(model.config, store.lookup());
    auto gpu = make_cuda_backend(model.config, weights, tiny_backend_options(512));
    auto cpu = make_cpu_backend(model.config, weights, tiny_backend_options(512));
    float worst_ref = 0, worst_cpu = 0;
    int agree = 0, total = 0;
    for (const auto& ref : refs) {
      const auto g = forward_all(*gpu, ref.tokens);
      const Versus v = versus_reference(ref, g, model.config.n_vocab);
      worst_ref = std::max(worst_ref, v.kept_max_abs);
      worst_cpu = std::max(worst_cpu, max_abs_difference(g, forward_all(*cpu, ref.tokens)));
      agree += v.top1_agree;
      total += int(ref.tokens.size());
    }
    std::printf("%s %s: max abs %.2e vs reference, %.2e vs CPU, top-1 %d/%d\n", GetParam(),
                std::string(dtype_name(q.dtype)).c_str(), worst_ref, worst_cpu, agree, total);
    EXPECT_LE(worst_ref, q.max_abs_ref);
    EXPECT_LE(worst_cpu, q.max_abs_cpu);
    EXPECT_GE(float(agree) / float(total), q.min_top1);
  }
}

// Greedy decoding gives the CPU's tokens (f32 weights: the logits agree to 1e-5, the models' top-1
// margins are above 1e-3).
TEST_P(CudaParity, GreedyTokensEqualTheCpu) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  const std::vector<int32_t> prompt = prompt_prefix(refs, 8);
  auto cpu = make_cpu_backend(model.config, weights, tiny_backend_options(512));
  auto gpu = make_cuda_backend(model.config, weights, tiny_backend_options(512));
  EXPECT_EQ(test::greedy_single(*gpu, prompt, 40), test::greedy_single(*cpu, prompt, 40));
}

// The captured decode step replays exactly what the launches compute, at every position.
TEST_P(CudaParity, GraphDecodeEqualsLaunches) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model(GetParam());
  for (DType dtype : {DType::F16, DType::I8}) {
    SCOPED_TRACE(testing::Message() << "dtype " << dtype_name(dtype));
    const TensorStore store(model, dtype, 32);
    const Weights weights = bind_weights(model.config, store.lookup());
    const auto refs = load_reference(GetParam());
    const std::vector<int32_t> prompt = prompt_prefix(refs, 5);
    CudaOptions launches, graph;
    launches.use_graph = false;
    graph.persistent_decode = false;  // the graph of the same kernels (the persistent step has its own test)
    auto with_graph = make_cuda_backend(model.config, weights, tiny_backend_options(512), graph);
    auto without = make_cuda_backend(model.config, weights, tiny_backend_options(512), launches);
    std::vector<float> a, b;
    EXPECT_EQ(test::greedy_single(*with_graph, prompt, 30, &a), test::greedy_single(*without, prompt, 30, &b));
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(max_abs_difference(a, b), 0.0f);
  }
}

// An f16 KV cache rounds each key and value once (2^-11 relative), an fp8 one to 3 mantissa bits (2^-4):
// fed the f32 cache's greedy tokens, their logits stay within 2% (f16) and 10% (fp8) of their scale of the
// f32 cache's, step by step.
TEST_P(CudaParity, F16AndFp8KvCachesFollowTheF32One) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  const std::vector<int32_t> prompt = prompt_prefix(refs, 8);
  auto f32_cache = make_cuda_backend(model.config, weights, tiny_backend_options(512));
  std::vector<float> a;
  const std::vector<int32_t> tokens = test::greedy_single(*f32_cache, prompt, 30, &a);
  float scale = 1.0f;
  for (float v : a) scale = std::max(scale, std::fabs(v));
  for (const auto& [dtype, tolerance] : {std::pair{cuda::KvDType::F16, 2e-2f}, std::pair{cuda::KvDType::F8, 0.1f}}) {
    SCOPED_TRACE(cuda::kv_dtype_name(dtype));
    CudaOptions options;
    options.kv_dtype = dtype;
    auto cache = make_cuda_backend(model.config, weights, tiny_backend_options(512), options);
    const int64_t n_vocab = model.config.n_vocab;
    std::vector<float> b(size_t(n_vocab) * tokens.size());
    cache->forward(prompt.data(), int64_t(prompt.size()), 0, b.data(), false);
    for (size_t i = 0; i + 1 < tokens.size(); ++i)
      cache->forward(&tokens[i], 1, int64_t(prompt.size() + i), b.data() + (i + 1) * size_t(n_vocab), false);
    ASSERT_EQ(a.size(), b.size());
    const float diff = max_abs_difference(a, b);
    std::printf("%s %s cache: logits within %.3f of their scale of the f32 cache's\n", GetParam(),
                cuda::kv_dtype_name(dtype), diff / scale);
    EXPECT_LE(diff, tolerance * scale);
    EXPECT_GT(diff, 0.0f) << "the cache gave the f32 one's logits bit for bit: was it used?";
  }
}

// Prompts of 16 tokens or more over an f16 cache take the tensor cores (kernels/cuda/attention_gemm.h),
// which round the queries and the probabilities to f16 too: every position's logits stay within 2% of their
// scale of the f32 cache's (which runs the tiled kernel), in one pass and in 48-token chunks.
TEST_P(CudaParity, F16KvPromptOnTensorCoresFollowsTheF32One) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  CudaOptions f16;
  f16.kv_dtype = cuda::KvDType::F16;
  auto f32_cache = make_cuda_backend(model.config, weights, tiny_backend_options(512));
  for (int64_t max_batch : {512, 48}) {
    if (!model.config.causal && max_batch < 512) continue;  // an encoder runs its input in one call
    auto f16_cache = make_cuda_backend(model.config, weights, tiny_backend_options(max_batch), f16);
    int checked = 0;
    for (const auto& ref : refs) {
      if (ref.tokens.size() < 16) continue;
      const std::vector<float> a = forward_all(*f32_cache, ref.tokens), b = forward_all(*f16_cache, ref.tokens);
      float scale = 1.0f;
      for (float v : a) scale = std::max(scale, std::fabs(v));
      EXPECT_LE(max_abs_difference(a, b), 2e-2f * scale) << ref.tokens.size() << " tokens, " << max_batch << " a step";
      ++checked;
    }
    EXPECT_GT(checked, 0) << "no reference prompt of 16 tokens or more";
  }
}

// Prefill of k tokens (cache only), then one token at a time, gives the logits of one pass over all
// tokens (GEMM and GEMV sum in different orders: 5e-5); rewinding recomputes from the earlier position.
TEST_P(CudaParity, DecodeMatchesOnePass) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  const int64_t n_vocab = model.config.n_vocab;
  auto backend = make_cuda_backend(model.config, weights, tiny_backend_options(64));
  for (const auto& ref : refs) {
    const auto& tokens = ref.tokens;
    const int64_t n = int64_t(tokens.size());
    const std::vector<float> all = forward_all(*backend, tokens);
    std::vector<float> last(static_cast<size_t>(n_vocab));
    if (!model.config.causal) continue;
    const int64_t k = n / 2;
    backend->forward(tokens.data(), k, 0, nullptr, false);
    float worst = 0;
    for (int64_t p = k; p < n; ++p) {
      backend->forward(tokens.data() + p, 1, p, last.data(), false);
      for (int64_t v = 0; v < n_vocab; ++v)
        worst = std::max(worst, std::fabs(last[size_t(v)] - all[size_t(p * n_vocab + v)]));
    }
    EXPECT_LE(worst, 5e-5f) << "prompt of " << n;
    if (n > 2) {
      backend->forward(tokens.data() + 1, 1, 1, last.data(), false);
      EXPECT_EQ(backend->n_past(), 2);
      for (int64_t v = 0; v < n_vocab; ++v) ASSERT_NEAR(last[size_t(v)], all[size_t(n_vocab + v)], 5e-5f);
    }
  }
}

// Both forwards report the same named intermediates in the same order, with the same values.
TEST_P(CudaParity, NamedIntermediatesMatchTheCpu) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  struct Seen {
    std::string name;
    int layer;
    std::vector<float> values;
  };
  auto record = [](std::vector<Seen>& out) {
    return [&out](std::string_view name, int layer, const float* data, int64_t n) {
      out.push_back({std::string(name), layer, std::vector<float>(data, data + n)});
    };
  };
  std::vector<Seen> cpu_seen, gpu_seen;
  BackendOptions o = tiny_backend_options(512);
  o.on_tensor = record(cpu_seen);
  auto cpu = make_cpu_backend(model.config, weights, o);
  o.on_tensor = record(gpu_seen);
  auto gpu = make_cuda_backend(model.config, weights, o);
  const std::vector<int32_t> tokens = prompt_prefix(refs, 12);
  forward_all(*cpu, tokens);
  forward_all(*gpu, tokens);
  ASSERT_EQ(cpu_seen.size(), gpu_seen.size());
  for (size_t i = 0; i < cpu_seen.size(); ++i) {
    SCOPED_TRACE(testing::Message() << cpu_seen[i].name << " layer " << cpu_seen[i].layer);
    EXPECT_EQ(gpu_seen[i].name, cpu_seen[i].name);
    EXPECT_EQ(gpu_seen[i].layer, cpu_seen[i].layer);
    float scale = 1;
    for (float v : cpu_seen[i].values) scale = std::max(scale, std::fabs(v));
    EXPECT_LE(max_abs_difference(gpu_seen[i].values, cpu_seen[i].values), 1e-4f * scale);
  }
}

// The families whose decode steps run as one persistent kernel (cuda::persistent_decode): pre-norm, a gated
// MLP, head_dim a power of two (llama_rope_linear's is 24).
bool runs_persistent(const std::string& name) {
  return name == "llama_gqa_tied" || name == "llama_mha" || name == "mistral_swa" || name == "qwen2";
}

// The two ways the persistent step brings in its weights: whole rows into each warp's buffer, or segments
// streamed through each warp's ring (the large models' feed, run here on small shapes too).
constexpr cuda::PersistentFeed kFeeds[] = {cuda::PersistentFeed::Buffered, cuda::PersistentFeed::Streamed};

const char* feed_name(cuda::PersistentFeed feed) {
  return feed == cuda::PersistentFeed::Streamed ? "streamed weights" : "buffered weights";
}

// The persistent decode step (f16 weights) gives the greedy tokens of the kernels run one by one, its logits
// within 1e-4 of their scale (f32 sums in another order, keys and values then rounded to f16), over f32 and
// f16 caches, up to 3 splits of the keys and either feed; the other families keep the kernels.
TEST_P(CudaParity, PersistentDecodeFollowsTheKernelsOneByOne) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F16);
  const Weights weights = bind_weights(model.config, store.lookup());
  const std::vector<int32_t> prompt = prompt_prefix(load_reference(GetParam()), 5);
  for (cuda::KvDType kv : {cuda::KvDType::F32, cuda::KvDType::F16}) {
    CudaOptions kernels;
    kernels.kv_dtype = kv;
    kernels.persistent_decode = false;
    auto many = make_cuda_backend(model.config, weights, tiny_backend_options(512), kernels);
    EXPECT_FALSE(cuda_persistent_decode_ready(*many));
    for (cuda::PersistentFeed feed : kFeeds) {
      SCOPED_TRACE(testing::Message() << cuda::kv_dtype_name(kv) << ", " << feed_name(feed));
      CudaOptions persistent;
      persistent.kv_dtype = kv;
      persistent.persistent_feed = feed;
      auto one = make_cuda_backend(model.config, weights, tiny_backend_options(512), persistent);
      ASSERT_EQ(cuda_persistent_decode_ready(*one), runs_persistent(GetParam()));
      test::expect_same_greedy(*one, *many, prompt, 60, 1e-4f);
    }
  }
}

// How far the persistent step's logits may stray with int8 weights from the f32 kernels' over the same
// weight values, as a share of the logits' scale: its products take the activations rounded to int8 by
// chunks of 16 values (up to half of a 254th of a chunk's largest magnitude each).
constexpr float kInt8StepShare = 5e-2f;

// The model with each matrix replaced by the values its int8 copy in `store` stands for (each stored value
// times its group's scale), in f32.
TinyModel dequantized(const TinyModel& model, const TensorStore& store) {
  TinyModel out = model;
  for (auto& [name, tensor] : out.tensors) {
    const TensorView* v = store.find(name);
    if (v == nullptr || v->dtype != DType::I8) continue;
    const size_t n_scales = size_t(v->rows()) * size_t(v->cols() / v->group_size);
    dequantize_rows({static_cast<const uint8_t*>(v->data), size_t(v->numel())},
                    {reinterpret_cast<const uint8_t*>(v->scales), n_scales * sizeof(uint16_t)}, v->rows(), v->cols(),
                    DType::I8, v->group_size, tensor.values.data());
  }
  return out;
}

// With int8 layers the persistent step multiplies each weight's value (times its group's scale) with the
// activations rounded to int8 (kInt8StepShare): the kernels' f32 path over those values, dequantized, is
// the yardstick. (The int8 kernels round the activations another way; the LM head and embeddings are f32
// in both.)
TEST_P(CudaParity, PersistentInt8DecodeFollowsTheF32KernelsOverTheSameValues) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model(GetParam());
  TensorStore int8_store(model, DType::I8, 32);
  const TinyModel values = dequantized(model, int8_store);
  const TensorStore f32_store(values, DType::F32);
  for (const char* name : {"token_embd.weight", "output.weight"})
    if (f32_store.find(name) != nullptr) int8_store.view(name) = *f32_store.find(name);
  const Weights int8_weights = bind_weights(model.config, int8_store.lookup());
  const Weights f32_weights = bind_weights(values.config, f32_store.lookup());
  CudaOptions kernels;
  kernels.persistent_decode = false;
  auto many = make_cuda_backend(values.config, f32_weights, tiny_backend_options(512), kernels);
  // The streamed feed copies the scales in pairs: every row's groups of 32 an even count.
  const ModelConfig& c = model.config;
  bool even_groups = true;
  for (int64_t k : {c.dim, c.q_dim(), c.ffn_dim}) even_groups = even_groups && k / 32 % 2 == 0;
  // The reference's tokens one at a time: every step is a decode step (a prompt would go through the int8
  // GEMM, which rounds the weights and activations to f16).
  std::vector<int32_t> tokens;
  for (const auto& ref : load_reference(GetParam())) tokens.insert(tokens.end(), ref.tokens.begin(), ref.tokens.end());
  for (cuda::PersistentFeed feed : kFeeds) {
    SCOPED_TRACE(feed_name(feed));
    CudaOptions persistent;
    persistent.persistent_feed = feed;
    auto one = make_cuda_backend(model.config, int8_weights, tiny_backend_options(512), persistent);
    const bool fits = feed == cuda::PersistentFeed::Buffered || even_groups;
    ASSERT_EQ(cuda_persistent_decode_ready(*one), runs_persistent(GetParam()) && fits);
    if (!cuda_persistent_decode_ready(*one)) continue;  // the int8 kernels: x rounded to int8, another computation
    test::expect_close_step_by_step(*one, *many, tokens, kInt8StepShare);
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, CudaParity, ::testing::ValuesIn(kModels));

// Past 256 keys the persistent step's attention splits each head's keys between blocks, the last to end
// merging their parts: 1,100 prompt tokens, then 40 steps with the persistent step kept on that far, give
// the kernels' tokens and logits; so do steps that cross a switch to the kernels at position 1,024 (1,000
// prompt tokens). mistral_swa's sliding window (24) cuts what each step sees (one split).
TEST(CudaBackend, PersistentDecodeOverLongContextsFollowsTheKernels) {
  KILN_REQUIRE_GPU();
  for (const char* name : {"llama_gqa_tied", "mistral_swa"}) {
    const TinyModel model = load_tiny_model(name);
    const TensorStore store(model, DType::F16);
    const Weights weights = bind_weights(model.config, store.lookup());
    BackendOptions options = tiny_backend_options(512);
    options.n_ctx = 1200;
    CudaOptions kernels;
    kernels.kv_dtype = cuda::KvDType::F16;
    kernels.persistent_decode = false;
    auto many = make_cuda_backend(model.config, weights, options, kernels);
    for (const auto& [max_position, n_prompt] :
         {std::pair{options.n_ctx, size_t(1100)}, std::pair{int64_t(1024), size_t(1000)}})
      for (cuda::PersistentFeed feed : kFeeds) {
        SCOPED_TRACE(testing::Message() << name << ", persistent below position " << max_position << ", "
                                        << feed_name(feed));
        CudaOptions persistent = kernels;
        persistent.persistent_decode = true;
        persistent.persistent_max_position = max_position;
        persistent.persistent_feed = feed;
        auto one = make_cuda_backend(model.config, weights, options, persistent);
        ASSERT_TRUE(cuda_persistent_decode_ready(*one));
        std::vector<int32_t> prompt(n_prompt);
        for (size_t i = 0; i < prompt.size(); ++i)
          prompt[i] = int32_t((i * 7919 + 13) % size_t(model.config.n_vocab));
        test::expect_same_greedy(*one, *many, prompt, 40, 1e-4f);
      }
  }
}

// The bidirectional encoder (no LM head: forward returns hidden states) against the float64 reference
// and the CPU backend, with the CPU test's bounds.
TEST(CudaBackend, EncoderMatchesCpuAndHuggingFace) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model("bert");
  const auto refs = load_hidden_reference("bert");
  const int64_t dim = model.config.dim;
  for (const auto& [dtype, bound] : {std::pair{DType::F32, 2e-5f}, std::pair{DType::F16, 1e-2f},
                                     std::pair{DType::BF16, 3e-2f}, std::pair{DType::I8, 1.5e-1f}}) {
    SCOPED_TRACE(testing::Message() << "dtype " << dtype_name(dtype));
    const TensorStore store(model, dtype, 32);
    const Weights weights = bind_weights(model.config, store.lookup());
    auto gpu = make_cuda_backend(model.config, weights, tiny_backend_options(512));
    auto cpu = make_cpu_backend(model.config, weights, tiny_backend_options(512));
    float worst_ref = 0, worst_cpu = 0;
    for (const auto& ref : refs) {
      const auto n = int64_t(ref.tokens.size());
      std::vector<float> g(size_t(n * dim)), c(size_t(n * dim));
      gpu->reset();
      gpu->forward(ref.tokens.data(), n, 0, g.data(), true);
      cpu->reset();
      cpu->forward(ref.tokens.data(), n, 0, c.data(), true);
      worst_ref = std::max(worst_ref, max_abs_difference(g, ref.hidden));
      worst_cpu = std::max(worst_cpu, max_abs_difference(g, c));
    }
    std::printf("bert %s: max abs %.2e vs reference, %.2e vs CPU\n", std::string(dtype_name(dtype)).c_str(), worst_ref,
                worst_cpu);
    EXPECT_LE(worst_ref, bound);
    EXPECT_LE(worst_cpu, bound);
  }
}

// forward_top's row against forward's, bit for bit: a prompt in chunks (max_batch 8), then greedy decode
// steps (the captured graph), k from 1 to the vocabulary; and a k outside [1, max_top_k()] refused.
TEST(CudaBackend, TheBestLogitsOfTheLastTokenAreThoseOfTheWholeRow) {
  KILN_REQUIRE_GPU();
  const Tiny tiny("qwen2", DType::F16);
  const ModelConfig& c = tiny.model.config;
  const Weights& weights = tiny.weights;
  const int64_t max_k = std::min(kMaxTopLogits, c.n_vocab);
  for (const int64_t k : {int64_t(1), int64_t(40), max_k}) {
    SCOPED_TRACE(testing::Message() << "k " << k);
    auto whole = make_cuda_backend(c, weights, tiny_backend_options(8));
    auto best = make_cuda_backend(c, weights, tiny_backend_options(8));
    ASSERT_EQ(best->max_top_k(), max_k);
    std::vector<int32_t> tokens = random_tokens(21, c.n_vocab, 77);
    std::vector<float> logits(size_t(c.n_vocab));
    int64_t position = 0;
    for (int step = 0; step < 6; ++step) {
      SCOPED_TRACE(testing::Message() << "step " << step);
      const auto n = int64_t(tokens.size());
      whole->forward(tokens.data(), n, position, logits.data(), false);
      const TopLogits top = best->forward_top(tokens.data(), n, position, k);
      ASSERT_EQ(top.k, k);
      expect_best_of(top, 0, logits.data(), c.n_vocab);
      EXPECT_EQ(best->n_past(), position + n);
      position += n;
      tokens = {int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin())};
    }
    EXPECT_THROW((void)best->forward_top(tokens.data(), 1, position, 0), Error);
    EXPECT_THROW((void)best->forward_top(tokens.data(), 1, position, max_k + 1), Error);
  }
}

// forward_last's row (copied into page-locked memory) is forward's, bit for bit, over a prompt and graph
// decode steps (a persistent step for the Llama family).
TEST(CudaBackend, TheLastRowIsForwardsRow) {
  KILN_REQUIRE_GPU();
  for (const char* family : {"qwen2", "llama_gqa_tied"}) {
    SCOPED_TRACE(family);
    const Tiny tiny(family, DType::F16);
    const ModelConfig& c = tiny.model.config;
    auto rows = make_cuda_backend(c, tiny.weights, tiny_backend_options(8));
    auto last = make_cuda_backend(c, tiny.weights, tiny_backend_options(8));
    std::vector<int32_t> tokens = random_tokens(21, c.n_vocab, 78);
    std::vector<float> logits(size_t(c.n_vocab));
    int64_t position = 0;
    for (int step = 0; step < 6; ++step) {
      SCOPED_TRACE(testing::Message() << "step " << step);
      const auto n = int64_t(tokens.size());
      rows->forward(tokens.data(), n, position, logits.data(), false);
      const float* row = last->forward_last(tokens.data(), n, position);
      EXPECT_EQ(std::memcmp(row, logits.data(), logits.size() * sizeof(float)), 0);
      position += n;
      tokens = {int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin())};
    }
  }
}

// Passes every call to a backend and hides its forward_top: Generator then takes whole rows.
class WholeRows final : public Backend {
 public:
  explicit WholeRows(Backend& b) : b_(b) {}
  std::string_view name() const override { return b_.name(); }
  const ModelConfig& config() const override { return b_.config(); }
  int64_t n_ctx() const override { return b_.n_ctx(); }
  int64_t n_past() const override { return b_.n_past(); }
  void reset() override { b_.reset(); }
  void forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
               bool all_logits) override {
    b_.forward(tokens, n_tokens, first_position, logits, all_logits);
  }

 private:
  Backend& b_;
};

// Generator on the GPU draws the same tokens from the best logits as from whole rows: greedy, sampled
// (top-k 40 at 0.9) and with a repeat penalty (whole rows either way).
TEST(CudaBackend, GeneratorTextFromTheBestLogitsEqualsWholeRows) {
  KILN_REQUIRE_GPU();
  const Tiny tiny("qwen2", DType::F16);
  const ModelConfig& c = tiny.model.config;
  const auto tokenizer = byte_tokenizer(-1);
  for (const BatchRequest& request : mixed_requests(6, c.n_vocab, 21)) {
    SCOPED_TRACE(request.index);
    auto gpu = make_cuda_backend(c, tiny.weights, tiny_backend_options(16));
    auto reference = make_cuda_backend(c, tiny.weights, tiny_backend_options(16));
    WholeRows whole(*reference);
    const AloneResult got = run_alone(*gpu, *tokenizer, request), want = run_alone(whole, *tokenizer, request);
    ASSERT_TRUE(got.error.empty() && want.error.empty()) << got.error << want.error;
    EXPECT_EQ(got.tokens, want.tokens);
    EXPECT_EQ(got.text, want.text);
    EXPECT_EQ(got.n_generated, want.n_generated);
  }
}

TEST(CudaBackend, RejectsBadInputAndTooLargeContexts) {
  KILN_REQUIRE_GPU();
  const TinyModel model = load_tiny_model("llama_mha");
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  auto gpu = make_cuda_backend(model.config, weights, tiny_backend_options(16));
  const int32_t bad = int32_t(model.config.n_vocab);
  std::vector<float> logits(size_t(model.config.n_vocab));
  EXPECT_THROW(gpu->forward(&bad, 1, 0, logits.data(), false), Error);
  const int32_t ok = 3;
  EXPECT_THROW(gpu->forward(&ok, 1, 5, logits.data(), false), Error);  // a gap in the cache

  // A cache larger than the GPU: the message gives the bytes needed and free.
  BackendOptions huge = tiny_backend_options(16);
  huge.n_ctx = int64_t(1) << 30;
  huge.max_kv_bytes = ~uint64_t(0);
  try {
    auto too_big = make_cuda_backend(model.config, weights, huge);
    FAIL() << "a 1G-position cache was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("free"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("KV cache"), std::string::npos) << e.what();
  }
}

// A persistent step of model c (random weights) against the kernels one by one: f16 weights from a 20-token
// prompt; int8 (groups of 64) against the f32 kernels over the same values (f32 embeddings and head in
// both), the 20 tokens fed one at a time (every step a decode step; the int8 GEMM of a prompt rounds to f16).
void expect_persistent_follows_kernels(const ModelConfig& c, cuda::PersistentFeed feed) {
  std::mt19937 rng(5);
  const TinyModel model = random_llama(c, rng);
  std::vector<int32_t> prompt(20);
  for (int32_t& t : prompt) t = int32_t(rng() % uint32_t(c.n_vocab));
  BackendOptions options = tiny_backend_options(512);
  CudaOptions persistent, kernels;
  persistent.persistent_feed = feed;
  kernels.persistent_decode = false;
  {
    SCOPED_TRACE("f16");
    const TensorStore store(model, DType::F16);
    const Weights weights = bind_weights(c, store.lookup());
    auto one = make_cuda_backend(c, weights, options, persistent);
    auto many = make_cuda_backend(c, weights, options, kernels);
    ASSERT_TRUE(cuda_persistent_decode_ready(*one));
    test::expect_same_greedy(*one, *many, prompt, 30, 1e-4f);
  }
  {
    SCOPED_TRACE("int8");
    TensorStore store(model, DType::I8, 64);
    const TinyModel values = dequantized(model, store);
    const TensorStore f32_store(values, DType::F32);
    for (const char* name : {"token_embd.weight", "output.weight"}) store.view(name) = *f32_store.find(name);
    const Weights weights = bind_weights(c, store.lookup()), yardstick = bind_weights(c, f32_store.lookup());
    auto one = make_cuda_backend(c, weights, options, persistent);
    auto many = make_cuda_backend(c, yardstick, options, kernels);
    ASSERT_TRUE(cuda_persistent_decode_ready(*one));
    test::expect_close_step_by_step(*one, *many, prompt, kInt8StepShare);
  }
}

ModelConfig random_llama_config(int64_t dim, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t ffn,
                                int64_t n_layers) {
  ModelConfig c;
  c.architecture = "llama";
  c.n_vocab = 512;
  c.dim = dim;
  c.n_layers = n_layers;
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv_heads;
  c.head_dim = c.rotary_dim = head_dim;
  c.ffn_dim = ffn;
  c.n_ctx_train = 512;
  return c;
}

// TinyLlama's widths (dim 2048, 32 query heads and 4 key/value heads of 64, MLP 5632), two layers of
// normal(0, 0.02) weights: rows too wide for one unit a warp to hold them all in shared memory at once
// (the warps' buffers take several groups a stage), or streamed.
TEST(CudaBackend, PersistentDecodeOfAWideModelFollowsTheKernels) {
  KILN_REQUIRE_GPU();
  for (cuda::PersistentFeed feed : kFeeds) {
    SCOPED_TRACE(feed_name(feed));
    expect_persistent_follows_kernels(random_llama_config(2048, 32, 4, 64, 5632, 2), feed);
  }
}

// Rows of 11,008 (Llama-2-7B's MLP) do not fit a warp's buffer: the step streams them (the default feed
// for such shapes), with heads of 128 and 4 query heads a key/value head.
TEST(CudaBackend, PersistentDecodeStreamsRowsTooWideForTheBuffers) {
  KILN_REQUIRE_GPU();
  const ModelConfig c = random_llama_config(2048, 16, 4, 128, 11008, 1);
  for (int group_size : {0, 64}) {  // f16, int8
    const cuda::PersistentShape shape = persistent_shape(c, group_size);
    EXPECT_FALSE(cuda::persistent_decode_supported(shape, cuda::KvDType::F16, cuda::PersistentFeed::Buffered));
    EXPECT_TRUE(cuda::persistent_decode_supported(shape, cuda::KvDType::F16));
  }
  expect_persistent_follows_kernels(c, cuda::PersistentFeed::Auto);
}

}  // namespace
}  // namespace kiln::test
