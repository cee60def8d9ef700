// The CPU backend's named intermediates, its input checks, and the ALiBi slopes.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/alibi.h"
#include "engine/backend.h"
#include "convert/kiln_writer.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "engine/weights.h"
#include "tests/engine/tiny_model.h"

namespace kiln::test {
namespace {

struct Record {
  std::string name;
  int layer;
  std::vector<float> data;
};

BackendOptions small_options(std::vector<Record>* records) {
  BackendOptions options;
  options.n_ctx = 64;
  options.n_threads = 2;
  options.max_batch = 16;
  if (records)
    options.on_tensor = [records](std::string_view name, int layer, const float* data, int64_t n) {
      records->push_back({std::string(name), layer, std::vector<float>(data, data + n)});
    };
  return options;
}

TEST(CpuBackend, ReportsEveryStageInOrder) {
  const TinyModel model = load_tiny_model("llama_gqa_tied");
  const ModelConfig& c = model.config;
  const TensorStore store(model, DType::F32);
  const Weights weights = bind_weights(c, store.lookup());
  std::vector<Record> records;
  auto backend = make_cpu_backend(c, weights, small_options(&records));
  const std::vector<int32_t> tokens = {3, 141, 59};
  std::vector<float> logits(size_t(c.n_vocab));
  backend->forward(tokens.data(), 3, 0, logits.data(), false);

  const std::pair<const char*, int64_t> stages[] = {
      {"attn_norm", c.dim}, {"qkv", c.qkv_dim()},  {"q", c.q_dim()},       {"k", c.kv_dim()},
      {"attn", c.q_dim()},  {"attn_out", c.dim},   {"ffn_norm", c.dim},    {"ffn_act", c.ffn_dim},
      {"layer_out", c.dim}};
  size_t at = 1;
  ASSERT_EQ(records.size(), 1 + std::size(stages) * size_t(c.n_layers) + 2);
  EXPECT_EQ(records[0].data.size(), size_t(3 * c.dim));
  for (int layer = 0; layer < c.n_layers; ++layer)
    for (const auto& [name, width] : stages) {
      EXPECT_EQ(records[at].name, name);
      EXPECT_EQ(records[at].layer, layer);
      EXPECT_EQ(records[at].data.size(), size_t(3 * width)) << name;
      ++at;
    }
  EXPECT_EQ(records[at].name, "result_norm");
  EXPECT_EQ(records[at].data.size(), size_t(c.dim));  // the last token only
  EXPECT_EQ(records[at + 1].name, "logits");
  EXPECT_EQ(records[at + 1].data, logits);

  // attn_norm of layer 0 is RMSNorm of the embedding rows, computed here naively in double.
  const auto& embd = model.tensors.at("token_embd.weight").values;
  const auto& norm_w = model.tensors.at("blk.0.attn_norm.weight").values;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const float* row = embd.data() + size_t(tokens[t]) * size_t(c.dim);
    double ss = 0;
    for (int64_t i = 0; i < c.dim; ++i) ss += double(row[i]) * row[i];
    const double inv = 1.0 / std::sqrt(ss / double(c.dim) + c.norm_eps);
    for (int64_t i = 0; i < c.dim; ++i)
      EXPECT_NEAR(records[1].data[t * size_t(c.dim) + size_t(i)], row[i] * inv * norm_w[size_t(i)], 1e-5);
  }
}

// The use the callback exists for: find the first tensor where two runs part. The second run quantizes only
// layer 0's QKV weights to int8, so the first stage that differs must be layer 0's fused QKV projection.
TEST(CpuBackend, IntermediatesLocateTheFirstDivergence) {
  const TinyModel model = load_tiny_model("llama_mha");
  const TensorStore f32_store(model, DType::F32);
  TensorStore mixed_store(model, DType::F32);
  const TensorStore i8_store(model, DType::I8);
  mixed_store.view("blk.0.attn_qkv.weight") = *i8_store.find("blk.0.attn_qkv.weight");
  std::vector<Record> a, b;
  auto backend_a = make_cpu_backend(model.config, bind_weights(model.config, f32_store.lookup()), small_options(&a));
  auto backend_b =
      make_cpu_backend(model.config, bind_weights(model.config, mixed_store.lookup()), small_options(&b));
  const std::vector<int32_t> tokens = {7, 8, 9, 10};
  backend_a->forward(tokens.data(), 4, 0, nullptr, false);
  backend_b->forward(tokens.data(), 4, 0, nullptr, false);
  ASSERT_EQ(a.size(), b.size());
  size_t first = a.size();
  for (size_t i = 0; i < a.size() && first == a.size(); ++i) {
    ASSERT_EQ(a[i].name, b[i].name);
    for (size_t j = 0; j < a[i].data.size(); ++j)
      if (std::fabs(a[i].data[j] - b[i].data[j]) > 1e-6f) {
        first = i;
        break;
      }
  }
  ASSERT_LT(first, a.size());
  EXPECT_EQ(a[first].name, "qkv");
  EXPECT_EQ(a[first].layer, 0);
  EXPECT_EQ(a.back().name, "layer_out");  // prefill: no output norm or logits
}

TEST(CpuBackend, ChecksItsInputs) {
  const TinyModel model = load_tiny_model("llama_gqa_tied");
  const TensorStore store(model, DType::F32);
  auto backend = make_cpu_backend(model.config, bind_weights(model.config, store.lookup()), small_options(nullptr));
  EXPECT_EQ(backend->n_ctx(), 64);
  std::vector<float> logits(size_t(model.config.n_vocab));
  const int32_t bad[] = {1, 256};
  EXPECT_THROW(backend->forward(bad, 2, 0, logits.data(), false), Error);  // outside the vocabulary
  const int32_t negative[] = {-1};
  EXPECT_THROW(backend->forward(negative, 1, 0, logits.data(), false), Error);
  const int32_t ok[] = {1, 2};
  EXPECT_THROW(backend->forward(ok, 2, 1, logits.data(), false), Error);  // a gap: nothing cached yet
  EXPECT_THROW(backend->forward(ok, 0, 0, logits.data(), false), Error);
  backend->forward(ok, 2, 0, logits.data(), false);
  EXPECT_EQ(backend->n_past(), 2);
  std::vector<int32_t> long_input(63, 5);
  EXPECT_THROW(backend->forward(long_input.data(), 63, 2, nullptr, false), Error);  // past n_ctx 64
  backend->forward(long_input.data(), 62, 2, nullptr, false);  // exactly fills it
  EXPECT_EQ(backend->n_past(), 64);
  backend->reset();
  EXPECT_EQ(backend->n_past(), 0);
  EXPECT_THROW(backend->forward(ok, 1, 1, logits.data(), false), Error);

  BackendOptions too_big = small_options(nullptr);
  too_big.max_kv_bytes = 1000;
  EXPECT_THROW((void)make_cpu_backend(model.config, bind_weights(model.config, store.lookup()), too_big), Error);
  BackendOptions no_batch = small_options(nullptr);
  no_batch.max_batch = 0;
  EXPECT_THROW((void)make_cpu_backend(model.config, bind_weights(model.config, store.lookup()), no_batch), Error);
}

// forward_last gives the last token's row of forward, and throws as forward does.
TEST(CpuBackend, TheLastRowIsForwardsRow) {
  const TinyModel model = load_tiny_model("llama_gqa_tied");
  const TensorStore store(model, DType::F32);
  auto rows = make_cpu_backend(model.config, bind_weights(model.config, store.lookup()), small_options(nullptr));
  auto last = make_cpu_backend(model.config, bind_weights(model.config, store.lookup()), small_options(nullptr));
  const auto n_vocab = size_t(model.config.n_vocab);
  std::vector<int32_t> tokens = {5, 17, 200, 3, 99};
  std::vector<float> logits(n_vocab);
  int64_t position = 0;
  for (int step = 0; step < 4; ++step) {
    rows->forward(tokens.data(), int64_t(tokens.size()), position, logits.data(), false);
    const float* row = last->forward_last(tokens.data(), int64_t(tokens.size()), position);
    EXPECT_EQ(std::vector<float>(row, row + n_vocab), logits) << "step " << step;
    position += int64_t(tokens.size());
    tokens = {int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin())};
  }
  const int32_t bad[] = {256};
  EXPECT_THROW((void)last->forward_last(bad, 1, position), Error);
}

// The same int8 weights from a .kiln file (bound by name through the loader) and from memory give the
// same logits bit for bit.
TEST(CpuBackend, RunsFromAKilnFile) {
  const TinyModel model = load_tiny_model("llama_mha");
  const TensorStore store(model, DType::I8);
  nlohmann::json metadata;
  metadata["model"] = model_config_to_json(model.config);
  KilnWriter writer(metadata);
  for (const auto& [name, tensor] : model.tensors) {
    const TensorView* v = store.find(name);
    TensorSpec spec{name, v->dtype, tensor.shape, v->group_size};
    writer.add(spec, [v](std::span<uint8_t> values, std::span<uint8_t> scales) {
      std::memcpy(values.data(), v->data, values.size());
      if (v->scales) std::memcpy(scales.data(), v->scales, scales.size());
    });
  }
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("kiln-engine-test-" + std::to_string(::getpid()) + ".kiln")).string();
  writer.write(path, true);
  const KilnFile file = KilnFile::open(path);
  std::filesystem::remove(path);  // the map keeps the data

  auto from_file = make_cpu_backend(file, small_options(nullptr));
  auto from_memory =
      make_cpu_backend(model.config, bind_weights(model.config, store.lookup()), small_options(nullptr));
  const std::vector<int32_t> tokens = {5, 17, 200, 3, 99, 42, 7};
  std::vector<float> a(tokens.size() * size_t(model.config.n_vocab)), b(a.size());
  from_file->forward(tokens.data(), int64_t(tokens.size()), 0, a.data(), true);
  from_memory->forward(tokens.data(), int64_t(tokens.size()), 0, b.data(), true);
  EXPECT_EQ(a, b);
  EXPECT_EQ(from_file->config().architecture, "llama");
}

TEST(Alibi, StandardSlopes) {
  // 8 heads: 2^-1 .. 2^-8.
  const std::vector<float> eight = alibi_slopes(8);
  ASSERT_EQ(eight.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(eight[size_t(i)], std::ldexp(1.0f, -(i + 1)));
  // 12 heads: the 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 (the odd terms of the 16-head series).
  const std::vector<float> twelve = alibi_slopes(12);
  ASSERT_EQ(twelve.size(), 12u);
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(twelve[size_t(i)], eight[size_t(i)]);
  const float extra[] = {0.70710678f, 0.35355339f, 0.17677670f, 0.08838835f};
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(twelve[size_t(8 + i)], extra[i]);
  // 1 head: 2^-8; 3 heads: 2^-4, 2^-8, then 2^-2.
  EXPECT_EQ(alibi_slopes(1), std::vector<float>{0.00390625f});
  EXPECT_EQ(alibi_slopes(3), (std::vector<float>{0.0625f, 0.00390625f, 0.25f}));
  EXPECT_THROW((void)alibi_slopes(0), Error);
}

}  // namespace
}  // namespace kiln::test
