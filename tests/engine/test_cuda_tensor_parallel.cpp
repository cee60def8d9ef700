// Tensor parallelism on CUDA through NCCL. One rank through the split path on one GPU gives the plain CUDA
// backend's bits; two or more ranks, where the machine has the GPUs, give the one-rank results up to the
// order of the sums, for the tiny families against Hugging Face, SmolLM2 against its reference, and a
// Llama-2-7B-shape model (two layers of random weights) against one rank. Tests that need more GPUs than
// the machine has skip themselves and say so.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/cuda_backend.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "engine/tensor_parallel_backend.h"
#include "engine/weights.h"
#include "tests/engine/greedy_test_util.h"
#include "tests/engine/smollm2_test_util.h"
#include "tests/engine/tiny_model.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace kiln::test {
namespace {

int gpu_count() {
  int count = 0;
  return cuda::device_available() && cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

#define KILN_REQUIRE_GPUS(n)                                                                                  \
  KILN_REQUIRE_GPU();                                                                                         \
  if (gpu_count() < (n))                                                                                      \
  GTEST_SKIP() << "needs " << (n) << " GPUs for " << (n) << " ranks; this machine has " << gpu_count()        \
               << " (a multi-GPU machine runs it)"

// Sizes from 2 up that the machine's GPUs and the model's key/value heads allow, at most 4.
std::vector<int> split_sizes(const ModelConfig& c) {
  std::vector<int> sizes;
  for (int size = 2; size <= std::min({4, gpu_count(), int(c.n_kv_heads)}); ++size) sizes.push_back(size);
  return sizes;
}

class CudaTensorParallel : public ::testing::TestWithParam<const char*> {};

// On one GPU the split path (NCCL group of one, the residual added by rank 0's matmul, the sums) changes
// nothing: the same logits bit for bit, in one pass and through the captured decode graph.
TEST_P(CudaTensorParallel, OneRankThroughNcclEqualsThePlainBackend) {
  KILN_REQUIRE_GPUS(1);
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F16);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  CudaOptions kernels;
  kernels.persistent_decode = false;  // the split path's kernels, one by one
  auto plain = make_cuda_backend(model.config, weights, tiny_backend_options(), kernels);
  auto one_rank = make_cuda_tensor_parallel_backend(model.config, weights, tiny_backend_options(), {}, 1);
  for (const auto& ref : refs) EXPECT_EQ(forward_all(*one_rank, ref.tokens), forward_all(*plain, ref.tokens));
  const std::vector<int32_t> prompt = prompt_prefix(refs, 8);
  std::vector<float> plain_logits, rank_logits;
  EXPECT_EQ(greedy_single(*one_rank, prompt, 16, &rank_logits), greedy_single(*plain, prompt, 16, &plain_logits));
  EXPECT_EQ(rank_logits, plain_logits);
}

// f32 weights over 2..4 GPUs: the split sums in another order, well inside the parity bound against the
// float64 reference (test_cuda_backend.cpp's); decode one token at a time (the captured graph, with its
// NCCL calls) gives the one-pass logits.
TEST_P(CudaTensorParallel, SplitMatchesOneRankAndHuggingFace) {
  KILN_REQUIRE_GPUS(2);
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  const int64_t n_vocab = model.config.n_vocab;
  auto one = make_cuda_backend(model.config, weights, tiny_backend_options(48));
  for (int size : split_sizes(model.config)) {
    SCOPED_TRACE(::testing::Message() << "-tp " << size);
    auto split = make_cuda_tensor_parallel_backend(model.config, weights, tiny_backend_options(48), {}, size);
    for (const auto& ref : refs) {
      const std::vector<float> logits = forward_all(*split, ref.tokens);
      EXPECT_LE(max_abs_difference(logits, forward_all(*one, ref.tokens)), 1e-4f);
      EXPECT_LE(kept_logit_error(ref, logits, n_vocab), 1e-4f);
    }
    const auto& tokens = refs.front().tokens;
    const int64_t n = int64_t(tokens.size()), k = n / 2;
    const std::vector<float> all = forward_all(*split, tokens);
    split->forward(tokens.data(), k, 0, nullptr, false);
    std::vector<float> last(static_cast<size_t>(n_vocab));
    float worst = 0;
    for (int64_t p = k; p < n; ++p) {
      split->forward(tokens.data() + p, 1, p, last.data(), false);
      for (int64_t v = 0; v < n_vocab; ++v) worst = std::max(worst, std::fabs(last[size_t(v)] - all[size_t(p * n_vocab + v)]));
    }
    EXPECT_LE(worst, 1e-4f);
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, CudaTensorParallel,
                         ::testing::Values("llama_gqa_tied", "llama_mha", "mistral_swa", "qwen2", "gpt2", "gptneox",
                                           "gptj", "bloom", "opt", "opt_post_ln"));

TEST(CudaTensorParallelErrors, MoreRanksThanGpusAreRefusedWithTheCount) {
  KILN_REQUIRE_GPUS(1);
  const TinyModel model = load_tiny_model("gpt2");  // 4 key/value heads
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const int size = gpu_count() + 1;
  if (size > 4) GTEST_SKIP() << "the tiny model splits over 4 ranks at most; this machine has " << gpu_count() << " GPUs";
  try {
    (void)make_cuda_tensor_parallel_backend(model.config, weights, tiny_backend_options(), {}, size);
    ADD_FAILURE() << "-tp " << size << " on " << gpu_count() << " GPUs was not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs a GPU per rank"), std::string::npos) << e.what();
  }
}

// SmolLM2 split unevenly over 2 GPUs (1 and 2 of its 3 key/value groups) and, with 3 GPUs, int8 one group
// each: the greedy continuations and logits of the numpy reference.
TEST(CudaTensorParallelSmolLM2, SplitMatchesTheReference) {
  KILN_REQUIRE_GPUS(2);
  const auto files = testing::convert_smollm2({DType::F16, DType::I8});
  if (!files) GTEST_SKIP() << testing::smollm2_missing();
  for (const auto& [dtype, size] : {std::pair{DType::F16, 2}, std::pair{DType::I8, 3}}) {
    if (size > gpu_count()) continue;
    SCOPED_TRACE(::testing::Message() << dtype_name(dtype) << " -tp " << size);
    const KilnFile file = KilnFile::open(files->path(dtype));
    const auto tokenizer = make_tokenizer(file.tokenizer_data());
    BackendOptions options;
    options.n_ctx = 256;
    CudaOptions cuda;
    cuda.kv_dtype = cuda::KvDType::F16;
    auto split = make_cuda_tensor_parallel_backend(file, options, cuda, size);
    testing::expect_greedy_matches_reference(*split, *tokenizer, dtype);
    testing::expect_last_logits_match_reference(*split, *tokenizer, dtype);
  }
}

// Llama-2-7B's widths (dim 4096, 32 heads of 128, MLP 11008, vocabulary 32000) with two layers of
// normal(0, 0.02) f16 weights: the split ranks pick the one-rank greedy tokens, their logits a rounding
// apart.
TEST(CudaTensorParallelLlama7BShape, SplitEqualsOneRank) {
  KILN_REQUIRE_GPUS(2);
  ModelConfig c;
  c.architecture = "llama";
  c.n_vocab = 32000;
  c.dim = 4096;
  c.n_layers = 2;
  c.n_heads = c.n_kv_heads = 32;
  c.head_dim = c.rotary_dim = 128;
  c.ffn_dim = 11008;
  c.n_ctx_train = 4096;
  std::mt19937 rng(11);
  const TinyModel model = random_llama(c, rng);
  const TensorStore store(model, DType::F16);
  const Weights weights = bind_weights(c, store.lookup());
  std::vector<int32_t> prompt(32);
  for (int32_t& t : prompt) t = int32_t(rng() % uint32_t(c.n_vocab));

  BackendOptions options;
  options.n_ctx = 256;
  auto one = make_cuda_backend(c, weights, options);
  std::vector<float> one_logits;
  const std::vector<int32_t> expected = greedy_single(*one, prompt, 16, &one_logits);
  one.reset();
  for (int size : {2, 4}) {
    if (size > gpu_count()) continue;
    SCOPED_TRACE(::testing::Message() << "-tp " << size);
    auto split = make_cuda_tensor_parallel_backend(c, weights, options, {}, size);
    std::vector<float> split_logits;
    EXPECT_EQ(greedy_single(*split, prompt, 16, &split_logits), expected);
    EXPECT_LE(max_abs_difference(split_logits, one_logits), 2e-3f);
  }
}

}  // namespace
}  // namespace kiln::test
