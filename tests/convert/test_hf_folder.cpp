// HfFolder on the committed two-shard fixture (make_safetensors_fixtures.py) and on folders made here
// that it must refuse: no safetensors, pickle weights, quantized checkpoints, bad or escaping indexes.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "convert/hf_folder.h"
#include "tests/convert/reader_test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::data_path;

constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
constexpr const char* kShard2 = "model-00002-of-00002.safetensors";
constexpr const char* kConfig = R"({"model_type": "llama", "hidden_size": 4})";

TEST(HfFolder, ShardedFixtureLooksUpTensorsAcrossShards) {
  const HfFolder folder = HfFolder::open(data_path("hf_sharded"));
  EXPECT_EQ(folder.config()["model_type"], "llama");
  EXPECT_EQ(folder.config()["num_hidden_layers"], 1);
  ASSERT_TRUE(folder.tokenizer_json().has_value());
  EXPECT_EQ(folder.tokenizer_json()->filename(), "tokenizer.json");
  ASSERT_TRUE(folder.tokenizer_config().has_value());
  EXPECT_EQ(folder.tokenizer_config()->filename(), "tokenizer_config.json");
  EXPECT_FALSE(folder.tokenizer_model().has_value());
  EXPECT_EQ(folder.shards().size(), 2u);

  std::ifstream in(data_path("safetensors_expected.json"));
  const json expected = json::parse(in);
  std::vector<std::string> all_names;
  for (const json& shard : expected["hf_shards"]) {
    const auto shard_file = shard["file"].get<std::string>();
    for (const json& want : shard["tensors"]) {
      const auto name = want["name"].get<std::string>();
      SCOPED_TRACE(name);
      all_names.push_back(name);
      const HfTensorRef ref = folder.tensor(name);
      EXPECT_EQ(fs::path(ref.file->path()).filename(), shard_file);
      EXPECT_EQ(ref.tensor->shape, want["shape"].get<std::vector<uint64_t>>());
      EXPECT_EQ(safetensors_dtype_name(ref.tensor->dtype), want["dtype"].get<std::string>());
      const auto bits = want["bits"].get<std::vector<uint32_t>>();
      std::vector<float> values(ref.tensor->numel);
      folder.read_f32(name, values.data());
      ASSERT_EQ(values.size(), bits.size());
      for (size_t j = 0; j < bits.size(); ++j) EXPECT_EQ(test::float_bits(values[j]), bits[j]) << j;
    }
  }
  std::sort(all_names.begin(), all_names.end());
  EXPECT_EQ(folder.tensor_names(), all_names);
  EXPECT_FALSE(folder.find("model.layers.1.mlp.up_proj.weight").has_value());
  test::expect_error([&] { (void)folder.tensor("nope"); }, "no tensor 'nope'");
}

// A scratch model folder: a config and whichever fixture files a test copies in.
class HfScratch : public ::testing::Test {
 protected:
  void SetUp() override { test::write_text(dir_.file("config.json"), kConfig); }
  void copy_shards() {
    for (const char* shard : {kShard1, kShard2})
      fs::copy_file(data_path(std::string("hf_sharded/") + shard), dir_.file(shard));
  }
  void write_index(const json& weight_map) {
    test::write_text(dir_.file("model.safetensors.index.json"), json{{"weight_map", weight_map}}.dump());
  }
  json fixture_weight_map() {
    std::ifstream in(data_path("hf_sharded/model.safetensors.index.json"));
    return json::parse(in)["weight_map"];
  }
  void expect_refused(std::string_view needle) {
    test::expect_error([&] { (void)HfFolder::open(dir_.path().string()); }, needle);
  }
  test::TempDir dir_;
};

TEST_F(HfScratch, SingleFileFolderAndItsPrecedenceOverAnIndex) {
  fs::copy_file(data_path("safetensors_small.safetensors"), dir_.file("model.safetensors"));
  write_index(json{{"x", "missing.safetensors"}});  // ignored: model.safetensors comes first
  test::write_text(dir_.file("tokenizer.model"), "not read here");
  const HfFolder folder = HfFolder::open(dir_.path().string());
  EXPECT_EQ(folder.shards().size(), 1u);
  EXPECT_EQ(folder.tensor_names().size(), 10u);
  EXPECT_EQ(folder.tensor("a.f32").tensor->shape, (std::vector<uint64_t>{3, 5}));
  EXPECT_TRUE(folder.tokenizer_model().has_value());
  EXPECT_FALSE(folder.tokenizer_json().has_value());
}

TEST_F(HfScratch, IndexWithTheFixtureShardsOpens) {
  copy_shards();
  write_index(fixture_weight_map());
  EXPECT_EQ(HfFolder::open(dir_.path().string()).tensor_names().size(), 5u);
}

TEST_F(HfScratch, NoSafetensorsWeights) {
  expect_refused("no model.safetensors or model.safetensors.index.json");
  test::write_text(dir_.file("pytorch_model.bin"), "pickle");
  expect_refused("pickle weights (pytorch_model.bin)");
}

TEST_F(HfScratch, MissingOrBrokenConfig) {
  fs::copy_file(data_path("safetensors_small.safetensors"), dir_.file("model.safetensors"));
  test::write_text(dir_.file("config.json"), "{\"model_type\": ");
  expect_refused("is not valid JSON");
  test::write_text(dir_.file("config.json"), "[1]");
  expect_refused("does not hold a JSON object");
  fs::remove(dir_.file("config.json"));
  expect_refused("has no config.json");
  test::expect_error([] { (void)HfFolder::open(data_path("safetensors_small.safetensors")); }, "is not a folder");
}

TEST_F(HfScratch, QuantizedCheckpointsAreRefusedByName) {
  fs::copy_file(data_path("safetensors_small.safetensors"), dir_.file("model.safetensors"));
  for (const char* method : {"gptq", "awq", "fp8", "bitsandbytes"}) {
    json config = json::parse(kConfig);
    config["quantization_config"] = {{"quant_method", method}, {"bits", 4}};
    test::write_text(dir_.file("config.json"), config.dump());
    expect_refused(std::string("quantized with ") + method);
  }
  json config = json::parse(kConfig);
  config["compression_config"] = {{"format", "int-quantized"}};
  test::write_text(dir_.file("config.json"), config.dump());
  expect_refused("quantized with an unknown method (config.json compression_config)");
  config = json::parse(kConfig);
  config["quantization_config"] = nullptr;  // explicitly none
  test::write_text(dir_.file("config.json"), config.dump());
  EXPECT_EQ(HfFolder::open(dir_.path().string()).shards().size(), 1u);
}

TEST_F(HfScratch, IndexShardPathsMustStayInsideTheFolder) {
  copy_shards();
  for (const char* escape : {"../model-00001-of-00002.safetensors", "sub/../../x.safetensors"}) {
    json weight_map = fixture_weight_map();
    weight_map["lm_head.weight"] = escape;
    write_index(weight_map);
    expect_refused("outside the model folder");
  }
  for (const char* bad : {"/etc/passwd", ""}) {
    json weight_map = fixture_weight_map();
    weight_map["lm_head.weight"] = bad;
    write_index(weight_map);
    expect_refused("not a file name inside the model folder");
  }
  json weight_map = fixture_weight_map();
  weight_map["lm_head.weight"] = 7;
  write_index(weight_map);
  expect_refused("not a file name");
}

TEST_F(HfScratch, IndexMustAgreeWithTheShards) {
  copy_shards();
  json weight_map = fixture_weight_map();
  weight_map["lm_head.weight"] = kShard1;  // it is in shard 2
  write_index(weight_map);
  expect_refused("places tensor 'lm_head.weight' in");
  weight_map = fixture_weight_map();
  weight_map["model.extra.weight"] = kShard2;
  write_index(weight_map);
  expect_refused("places tensor 'model.extra.weight'");
  weight_map = fixture_weight_map();
  weight_map["lm_head.weight"] = "model-00003-of-00003.safetensors";
  write_index(weight_map);
  expect_refused("which is missing");
  write_index(json::object());
  expect_refused("names no tensors");
  test::write_text(dir_.file("model.safetensors.index.json"), R"({"metadata": {}})");
  expect_refused("has no weight_map object");
  test::write_text(dir_.file("model.safetensors.index.json"), "[]");
  expect_refused("has no weight_map object");
}

TEST_F(HfScratch, TensorInTwoShardsIsRefused) {
  fs::copy_file(data_path(std::string("hf_sharded/") + kShard1), dir_.file(kShard1));
  fs::copy_file(data_path(std::string("hf_sharded/") + kShard1), dir_.file("copy.safetensors"));
  write_index(json{{"model.embed_tokens.weight", kShard1}, {"x", "copy.safetensors"}});
  expect_refused("is in both");
}

}  // namespace
}  // namespace kiln
