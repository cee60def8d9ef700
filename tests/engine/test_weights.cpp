// Weight binding checks, KV cache layout and workspace sizing.
#include <gtest/gtest.h>

#include <string>

#include "engine/error.h"
#include "engine/kv_cache.h"
#include "engine/weights.h"
#include "engine/workspace.h"
#include "tests/engine/tiny_model.h"

namespace kiln::test {
namespace {

// The message of the kiln::Error fn throws; fails the test when it throws nothing.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no kiln::Error thrown";
  return "";
}

TEST(Weights, BindsEveryTensorOfATiedModel) {
  const TinyModel model = load_tiny_model("llama_gqa_tied");
  const TensorStore store(model, DType::F32);
  const Weights w = bind_weights(model.config, store.lookup());
  ASSERT_EQ(int64_t(w.layers.size()), model.config.n_layers);
  EXPECT_EQ(w.token_embd.data, store.find("token_embd.weight")->data);
  EXPECT_EQ(w.output.data, w.token_embd.data);  // tied
  EXPECT_EQ(w.layers[1].attn_qkv.data, store.find("blk.1.attn_qkv.weight")->data);
  EXPECT_EQ(w.layers[1].attn_qkv.dims[0], model.config.qkv_dim());
  EXPECT_EQ(w.layers[0].ffn_up.dims[0], 2 * model.config.ffn_dim);
  EXPECT_EQ(w.layers[0].ffn_norm, store.find("blk.0.ffn_norm.weight")->data);
  EXPECT_EQ(w.layers[0].attn_qkv_bias, nullptr);
  EXPECT_EQ(w.output_norm_bias, nullptr);
  EXPECT_EQ(w.pos_embd.data, nullptr);
}

TEST(Weights, UntiedModelBindsItsOwnHead) {
  const TinyModel model = load_tiny_model("llama_mha");
  const TensorStore store(model, DType::I8);
  const Weights w = bind_weights(model.config, store.lookup());
  EXPECT_EQ(w.output.data, store.find("output.weight")->data);
  EXPECT_NE(w.output.data, w.token_embd.data);
  EXPECT_EQ(w.output.dtype, DType::I8);
  EXPECT_EQ(w.output.group_size, 32u);
}

TEST(Weights, RefusesAMissingTensor) {
  const TinyModel model = load_tiny_model("llama_mha");
  TensorStore store(model, DType::F32);
  store.erase("blk.2.ffn_down.weight");
  const std::string message = error_of([&] { (void)bind_weights(model.config, store.lookup()); });
  EXPECT_NE(message.find("blk.2.ffn_down.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("lacks"), std::string::npos) << message;
}

TEST(Weights, RefusesAMissingUntiedHead) {
  const TinyModel model = load_tiny_model("llama_mha");
  TensorStore store(model, DType::F32);
  store.erase("output.weight");
  EXPECT_NE(error_of([&] { (void)bind_weights(model.config, store.lookup()); }).find("output.weight"),
            std::string::npos);
}

TEST(Weights, RefusesAWrongShape) {
  const TinyModel model = load_tiny_model("llama_gqa_tied");
  TensorStore store(model, DType::F32);
  TensorView& qkv = store.view("blk.0.attn_qkv.weight");
  qkv.dims[0] = model.config.q_dim();  // as if K and V were left out
  qkv.bytes = uint64_t(qkv.numel()) * 4;
  const std::string message = error_of([&] { (void)bind_weights(model.config, store.lookup()); });
  EXPECT_NE(message.find("blk.0.attn_qkv.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("[64, 64]"), std::string::npos) << message;
  EXPECT_NE(message.find("[128, 64]"), std::string::npos) << message;
}

TEST(Weights, RefusesWrongDtypes) {
  const TinyModel model = load_tiny_model("llama_gqa_tied");
  {
    TensorStore store(model, DType::F32);
    TensorView& norm = store.view("blk.1.attn_norm.weight");
    norm.dtype = DType::F16;
    norm.bytes /= 2;
    EXPECT_NE(error_of([&] { (void)bind_weights(model.config, store.lookup()); }).find("must be f32"),
              std::string::npos);
  }
  {
    TensorStore store(model, DType::F32);
    TensorView& up = store.view("blk.0.ffn_up.weight");
    up.dtype = DType::U8;
    up.bytes /= 4;
    EXPECT_NE(error_of([&] { (void)bind_weights(model.config, store.lookup()); }).find("not a weight dtype"),
              std::string::npos);
  }
  {
    TensorStore store(model, DType::I8);
    store.view("token_embd.weight").scales = nullptr;
    EXPECT_NE(error_of([&] { (void)bind_weights(model.config, store.lookup()); }).find("lacks scales"),
              std::string::npos);
  }
  {
    TensorStore store(model, DType::F32);
    store.view("output_norm.weight").bytes = 4;  // size disagrees with the shape
    EXPECT_NE(error_of([&] { (void)bind_weights(model.config, store.lookup()); }).find("output_norm.weight"),
              std::string::npos);
  }
}

TEST(Weights, ConfigFlagsRequireTheirTensors) {
  const TinyModel model = load_tiny_model("llama_gqa_tied");
  const TensorStore store(model, DType::F32);
  ModelConfig biased = model.config;
  biased.attention_bias = true;
  EXPECT_NE(error_of([&] { (void)bind_weights(biased, store.lookup()); }).find("blk.0.attn_qkv.bias"),
            std::string::npos);
  ModelConfig layer_norm = model.config;
  layer_norm.norm = NormKind::Layer;
  EXPECT_NE(error_of([&] { (void)bind_weights(layer_norm, store.lookup()); }).find("attn_norm.bias"),
            std::string::npos);
  ModelConfig learned = model.config;
  learned.position = PositionKind::Learned;
  EXPECT_NE(error_of([&] { (void)bind_weights(learned, store.lookup()); }).find("pos_embd.weight"),
            std::string::npos);
  ModelConfig plain_mlp = model.config;
  plain_mlp.mlp = MlpKind::Gelu;  // expects [ffn_dim, dim], the file has the gated [2 * ffn_dim, dim]
  EXPECT_NE(error_of([&] { (void)bind_weights(plain_mlp, store.lookup()); }).find("ffn_up.weight"),
            std::string::npos);
}

TEST(KvCache, AppendWritesTheDocumentedLayout) {
  ModelConfig c;
  c.n_vocab = 10;
  c.dim = 8;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 3;
  c.ffn_dim = 8;
  c.n_ctx_train = 16;
  c.rotary_dim = 2;
  KvCache cache = make_kv_cache(c, 5, uint64_t(1) << 20);
  EXPECT_EQ(cache.k.size(), size_t(2 * 2 * 5 * 3));
  EXPECT_EQ(cache.bytes(), 2 * cache.k.size() * sizeof(float));
  // Two tokens; rows of k hold [n_kv_heads, head_dim] (stride 6), rows of v sit in a wider buffer (stride 10).
  std::vector<float> k(12), v(20);
  for (size_t i = 0; i < k.size(); ++i) k[i] = float(i);
  for (size_t i = 0; i < v.size(); ++i) v[i] = 100.0f + float(i);
  kv_append(cache, 1, k.data(), 6, v.data(), 10, 2, 3);
  for (int t = 0; t < 2; ++t)
    for (int h = 0; h < 2; ++h)
      for (int d = 0; d < 3; ++d) {
        const size_t at = size_t(((1 * 2 + h) * 5 + 3 + t) * 3 + d);  // [layer][head][position][dim]
        EXPECT_EQ(cache.k[at], k[size_t(t * 6 + h * 3 + d)]);
        EXPECT_EQ(cache.v[at], v[size_t(t * 10 + h * 3 + d)]);
      }
  EXPECT_THROW(kv_append(cache, 1, k.data(), 6, v.data(), 10, 2, 4), Error);  // past n_ctx
  EXPECT_THROW(kv_append(cache, 2, k.data(), 6, v.data(), 10, 1, 0), Error);  // no such layer
  EXPECT_THROW((void)make_kv_cache(c, 0, uint64_t(1) << 20), Error);
  EXPECT_THROW((void)make_kv_cache(c, 1000, 1000), Error);  // over the byte budget
}

TEST(Workspace, SizesEveryBufferForTheBatch) {
  const TinyModel model = load_tiny_model("llama_rope_linear");
  const ModelConfig& c = model.config;
  const Workspace w = make_workspace(c, 7);
  EXPECT_EQ(w.x.size(), size_t(7 * c.dim));
  EXPECT_EQ(w.qkv.size(), size_t(7 * c.qkv_dim()));
  EXPECT_EQ(w.q.size(), size_t(7 * c.q_dim()));
  EXPECT_EQ(w.k.size(), size_t(7 * c.kv_dim()));
  EXPECT_EQ(w.up.size(), size_t(7 * 2 * c.ffn_dim));
  EXPECT_EQ(w.act.size(), size_t(7 * c.ffn_dim));
  EXPECT_THROW((void)make_workspace(c, 0), Error);
  EXPECT_THROW((void)make_workspace(c, 1 << 20), Error);
}

}  // namespace
}  // namespace kiln::test
