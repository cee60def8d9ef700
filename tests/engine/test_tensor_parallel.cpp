// Tensor parallelism on the CPU backend: the shard plan, the sharded weights against slices of the whole
// model's, the host all-reduce and the rank threads, and the split model's logits against the one-rank
// backend and Hugging Face's float64 reference, for every tiny model family.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <random>
#include <stdexcept>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/host_communicator.h"
#include "engine/rank_threads.h"
#include "engine/tensor_parallel_backend.h"
#include "engine/tensor_shard.h"
#include "kernels/cpu/matmul.h"
#include "tests/engine/tiny_model.h"

namespace kiln::test {
namespace {

// SmolLM2-135M's shape: 9 query heads in 3 key/value groups.
ModelConfig smollm2_shape() {
  ModelConfig c;
  c.architecture = "llama";
  c.n_vocab = 49152;
  c.dim = 576;
  c.n_layers = 30;
  c.n_heads = 9;
  c.n_kv_heads = 3;
  c.head_dim = 64;
  c.rotary_dim = 64;
  c.ffn_dim = 1536;
  c.n_ctx_train = 8192;
  return c;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TensorShard, RangesCoverTheModelOnceWithWholeGroups) {
  const ModelConfig c = smollm2_shape();
  for (int size = 1; size <= 3; ++size) {
    int64_t head = 0, kv = 0, ffn = 0, vocab = 0;
    for (int r = 0; r < size; ++r) {
      const TensorShard s = plan_shard(c, Weights{}, r, size);
      EXPECT_EQ(s.head_begin, head);
      EXPECT_EQ(s.kv_head_begin, kv);
      EXPECT_EQ(s.ffn_begin, ffn);
      EXPECT_EQ(s.vocab_begin, vocab);
      EXPECT_EQ(s.head_begin, s.kv_head_begin * 3);  // a group's query heads stay with it
      EXPECT_EQ(s.head_end, s.kv_head_end * 3);
      EXPECT_GT(s.kv_head_end, s.kv_head_begin);
      const ModelConfig rc = shard_config(c, s);
      EXPECT_EQ(rc.n_heads, s.head_end - s.head_begin);
      EXPECT_EQ(rc.ffn_dim, s.ffn_end - s.ffn_begin);
      EXPECT_EQ(rc.n_vocab, s.vocab_end - s.vocab_begin);
      head = s.head_end, kv = s.kv_head_end, ffn = s.ffn_end, vocab = s.vocab_end;
    }
    EXPECT_EQ(head, c.n_heads);
    EXPECT_EQ(kv, c.n_kv_heads);
    EXPECT_EQ(ffn, c.ffn_dim);
    EXPECT_EQ(vocab, c.n_vocab);
  }
}

TEST(TensorShard, RefusesMoreRanksThanKeyValueHeads) {
  const std::string message = error_of([] { (void)plan_shard(smollm2_shape(), Weights{}, 0, 4); });
  EXPECT_NE(message.find("3 key/value heads"), std::string::npos) << message;
  EXPECT_NE(message.find("-tp 3"), std::string::npos) << message;
}

// BLOOM's 6 heads of 16 over 2 ranks put a rank boundary at column 48, inside an int8 group of 32.
TEST(TensorShard, RefusesASplitInsideAnInt8Group) {
  const TinyModel model = load_tiny_model("bloom");
  const TensorStore store(model, DType::I8, 32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const std::string message = error_of([&] { (void)plan_shard(model.config, weights, 1, 2); });
  EXPECT_NE(message.find("inside an int8 group of 32"), std::string::npos) << message;
  EXPECT_NO_THROW((void)plan_shard(model.config, weights, 1, 3));
}

// Row `row` of t with columns [c0, c1), dequantized.
std::vector<float> row_part(const TensorView& t, int64_t row, int64_t c0, int64_t c1) {
  std::vector<float> whole(size_t(t.cols()));
  dequantize_row(t, row, whole.data());
  return {whole.begin() + c0, whole.begin() + c1};
}

TEST(TensorShard, ShardedWeightsAreSlicesOfTheWholeModels) {
  const TinyModel model = load_tiny_model("llama_gqa_tied");
  const ModelConfig& c = model.config;
  for (DType dtype : {DType::F16, DType::I8}) {
    const TensorStore store(model, dtype, 16);
    const Weights whole = bind_weights(c, store.lookup());
    const TensorShard s = plan_shard(c, whole, 1, 2);
    const ShardedWeights sharded = shard_weights(c, whole, s);
    const Weights& w = sharded.weights;
    const LayerWeights &wl = whole.layers[1], &sl = w.layers[1];
    const int64_t hd = c.head_dim, q0 = s.head_begin * hd, q1 = s.head_end * hd;
    const int64_t k0 = c.q_dim() + s.kv_head_begin * hd, kv_rows = (s.kv_head_end - s.kv_head_begin) * hd;
    const int64_t q_rows = q1 - q0, ffn = s.ffn_end - s.ffn_begin;
    // QKV: this rank's query rows, then its key rows, then its value rows.
    for (int64_t i = 0; i < q_rows; ++i)
      EXPECT_EQ(row_part(sl.attn_qkv, i, 0, c.dim), row_part(wl.attn_qkv, q0 + i, 0, c.dim));
    for (int64_t i = 0; i < kv_rows; ++i) {
      EXPECT_EQ(row_part(sl.attn_qkv, q_rows + i, 0, c.dim), row_part(wl.attn_qkv, k0 + i, 0, c.dim));
      EXPECT_EQ(row_part(sl.attn_qkv, q_rows + kv_rows + i, 0, c.dim),
                row_part(wl.attn_qkv, k0 + c.kv_dim() + i, 0, c.dim));
    }
    // Output and down projections: this rank's columns of every row.
    for (int64_t i = 0; i < c.dim; ++i) {
      EXPECT_EQ(row_part(sl.attn_out, i, 0, q_rows), row_part(wl.attn_out, i, q0, q1));
      EXPECT_EQ(row_part(sl.ffn_down, i, 0, ffn), row_part(wl.ffn_down, i, s.ffn_begin, s.ffn_end));
    }
    // Gate rows, then up rows.
    for (int64_t i = 0; i < ffn; ++i) {
      EXPECT_EQ(row_part(sl.ffn_up, i, 0, c.dim), row_part(wl.ffn_up, s.ffn_begin + i, 0, c.dim));
      EXPECT_EQ(row_part(sl.ffn_up, ffn + i, 0, c.dim), row_part(wl.ffn_up, c.ffn_dim + s.ffn_begin + i, 0, c.dim));
    }
    // The vocabulary rows; the tied LM head is the same view.
    EXPECT_EQ(w.token_embd.rows(), s.vocab_end - s.vocab_begin);
    EXPECT_EQ(row_part(w.token_embd, 0, 0, c.dim), row_part(whole.token_embd, s.vocab_begin, 0, c.dim));
    EXPECT_EQ(w.output.data, w.token_embd.data);
    EXPECT_EQ(sl.attn_norm, wl.attn_norm);
  }
}

TEST(RankThreads, RunsEveryRankAtOnceAndRethrows) {
  RankThreads threads(4);
  std::barrier<> meet(4);  // no rank passes until all four are running
  std::atomic<int> ran{0};
  threads.run([&](int) {
    meet.arrive_and_wait();
    ++ran;
  });
  EXPECT_EQ(ran.load(), 4);
  EXPECT_THROW(threads.run([](int rank) {
                 if (rank == 2) throw std::runtime_error("rank 2");
               }),
               std::runtime_error);
  threads.run([&](int) { ++ran; });  // still usable after a failure
  EXPECT_EQ(ran.load(), 8);
}

TEST(HostCommunicator, EveryRankEndsWithTheRankOrderSum) {
  constexpr int kRanks = 3;
  constexpr int64_t kN = 1001;  // not a multiple of the ranks
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<std::vector<float>> data(kRanks, std::vector<float>(kN));
  for (auto& d : data)
    for (float& v : d) v = dist(rng);
  std::vector<float> expected(kN);
  for (int64_t i = 0; i < kN; ++i) {
    float sum = 0;
    for (const auto& d : data) sum += d[size_t(i)];
    expected[size_t(i)] = sum;
  }
  auto comms = make_host_communicators(kRanks);
  RankThreads threads(kRanks);
  for (int call = 0; call < 2; ++call) {  // the second call sums the sums
    threads.run([&](int rank) { comms[size_t(rank)]->all_reduce_sum(data[size_t(rank)].data(), kN); });
    for (const auto& d : data) EXPECT_EQ(d, expected);
    for (float& v : expected) v *= kRanks;
  }
}

// The tensor-parallel sizes a tiny model splits into (its key/value heads bound them).
std::vector<int> sizes_for(const ModelConfig& c) {
  std::vector<int> sizes;
  for (int size = 2; size <= 4; ++size)
    if (size <= c.n_kv_heads) sizes.push_back(size);
  return sizes;
}

class TensorParallel : public ::testing::TestWithParam<const char*> {};

// f32 weights: the split changes only the order of the output and down projections' sums. max_batch 48
// runs the 320-token prompts in chunks on every rank and gathers their logits in chunks.
TEST_P(TensorParallel, F32LogitsMatchOneRankAndHuggingFace) {
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  auto one = make_cpu_backend(model.config, weights, tiny_backend_options(48));
  for (int size : sizes_for(model.config)) {
    SCOPED_TRACE(testing::Message() << "-tp " << size);
    auto split = make_cpu_tensor_parallel_backend(model.config, weights, tiny_backend_options(48), size);
    for (const auto& ref : refs) {
      const std::vector<float> logits = forward_all(*split, ref.tokens);
      EXPECT_LE(max_abs_difference(logits, forward_all(*one, ref.tokens)), 2e-5f);
      EXPECT_LE(kept_logit_error(ref, logits, model.config.n_vocab), 1e-4f);
    }
  }
}

// One token at a time after a prefill, each rank appending its heads to its own KV cache, gives the
// one-pass logits.
TEST_P(TensorParallel, DecodeMatchesOnePass) {
  const TinyModel model = load_tiny_model(GetParam());
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_reference(GetParam());
  const auto& tokens = refs.front().tokens;
  const int64_t n = int64_t(tokens.size()), n_vocab = model.config.n_vocab, k = n / 2;
  for (int size : sizes_for(model.config)) {
    auto split = make_cpu_tensor_parallel_backend(model.config, weights, tiny_backend_options(512), size);
    const std::vector<float> all = forward_all(*split, tokens);
    split->reset();
    split->forward(tokens.data(), k, 0, nullptr, false);
    std::vector<float> last(size_t(n_vocab), 0.0f);
    float worst = 0;
    for (int64_t p = k; p < n; ++p) {
      split->forward(tokens.data() + p, 1, p, last.data(), false);
      for (int64_t v = 0; v < n_vocab; ++v) worst = std::max(worst, std::fabs(last[size_t(v)] - all[size_t(p * n_vocab + v)]));
    }
    EXPECT_EQ(split->n_past(), n);
    EXPECT_LE(worst, 1e-5f) << "-tp " << size;
  }
}

// int8 weights: each rank quantizes its own columns of the activations, so the split differs from one
// rank by about the quantization step; it stays as close to the reference as the one-rank backend is
// required to (test_cpu_backend_parity.cpp's bounds).
TEST_P(TensorParallel, Int8StaysCloseToHuggingFace) {
  const TinyModel model = load_tiny_model(GetParam());
  const auto refs = load_reference(GetParam());
  for (int size : sizes_for(model.config)) {
    const TensorStore store(model, DType::I8, 32);
    const Weights weights = bind_weights(model.config, store.lookup());
    std::unique_ptr<Backend> split;
    const std::string refused =
        error_of([&] { split = make_cpu_tensor_parallel_backend(model.config, weights, tiny_backend_options(512), size); });
    if (!refused.empty()) {  // a head boundary inside a group: checked by RefusesASplitInsideAnInt8Group
      EXPECT_NE(refused.find("int8 group"), std::string::npos) << refused;
      continue;
    }
    float worst = 0;
    int agree = 0, total = 0;
    for (const auto& ref : refs) {
      const std::vector<float> logits = forward_all(*split, ref.tokens);
      worst = std::max(worst, kept_logit_error(ref, logits, model.config.n_vocab));
      for (size_t p = 0; p < ref.tokens.size(); ++p) {
        const float* row = logits.data() + p * size_t(model.config.n_vocab);
        agree += std::max_element(row, row + model.config.n_vocab) - row == ref.argmax[p];
        ++total;
      }
    }
    EXPECT_LE(worst, 3.5e-1f) << "-tp " << size;
    EXPECT_GE(float(agree) / float(total), 0.9f) << "-tp " << size;
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, TensorParallel,
                         ::testing::Values("llama_gqa_tied", "llama_mha", "mistral_swa", "qwen2", "gpt2", "gptneox",
                                           "gptj", "bloom", "opt", "opt_post_ln"));

// An encoder's hidden states: every rank ends with all of them.
TEST(TensorParallelEncoder, HiddenStatesMatchOneRank) {
  const TinyModel model = load_tiny_model("bert");
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  const auto refs = load_hidden_reference("bert");
  const auto& tokens = refs.front().tokens;
  auto one = make_cpu_backend(model.config, weights, tiny_backend_options(512));
  auto split = make_cpu_tensor_parallel_backend(model.config, weights, tiny_backend_options(512), 2);
  EXPECT_LE(max_abs_difference(forward_all(*split, tokens), forward_all(*one, tokens)), 2e-5f);
}

// Every rank refuses the same bad call before its first collective, so the call fails with the one-rank
// message and the ranks stay usable.
TEST(TensorParallelErrors, BadCallsFailOnEveryRankAndLeaveItUsable) {
  const TinyModel model = load_tiny_model("llama_gqa_tied");
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(model.config, store.lookup());
  auto split = make_cpu_tensor_parallel_backend(model.config, weights, tiny_backend_options(512), 2);
  std::vector<float> logits(size_t(model.config.n_vocab));
  const int32_t outside = int32_t(model.config.n_vocab);
  EXPECT_NE(error_of([&] { split->forward(&outside, 1, 0, logits.data(), false); }).find("outside the vocabulary of 256"),
            std::string::npos);
  const int32_t tokens[] = {1, 2, 3};
  EXPECT_NE(error_of([&] { split->forward(tokens, 3, 5, logits.data(), false); }).find("gap"), std::string::npos);
  // The last vocabulary row is the last rank's.
  const int32_t last = outside - 1;
  split->forward(&last, 1, 0, logits.data(), false);
  auto one = make_cpu_backend(model.config, weights, tiny_backend_options(512));
  std::vector<float> expected(logits.size());
  one->forward(&last, 1, 0, expected.data(), false);
  EXPECT_LE(max_abs_difference(logits, expected), 2e-5f);
  const std::string refused =
      error_of([&] { (void)make_cpu_tensor_parallel_backend(model.config, weights, tiny_backend_options(512), 3); });
  EXPECT_NE(refused.find("2 key/value heads"), std::string::npos) << refused;
}

}  // namespace
}  // namespace kiln::test
