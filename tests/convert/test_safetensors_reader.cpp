// The safetensors reader against a fixture written by the `safetensors` package
// (make_safetensors_fixtures.py), and on broken and hostile files: each must be refused with a
// one-line kiln::Error, never a crash or an out-of-bounds read.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "convert/safetensors_reader.h"
#include "tests/convert/reader_test_util.h"

namespace kiln {
namespace {

using nlohmann::json;
using test::data_path;
using test::float_bits;

json expected_fixture() {
  std::ifstream in(data_path("safetensors_expected.json"));
  EXPECT_TRUE(in.good());
  return json::parse(in);
}

// Checks one file against its expected listing: dtypes, shapes, places, raw bytes and f32 values.
void expect_file_matches(const SafetensorsFile& file, const json& expected) {
  const std::vector<uint8_t> raw = test::read_bytes(file.path());
  ASSERT_EQ(file.tensors().size(), expected["tensors"].size());
  for (size_t i = 0; i < file.tensors().size(); ++i) {
    const SafetensorsTensor& tensor = file.tensors()[i];
    const json& want = expected["tensors"][i];
    SCOPED_TRACE(tensor.name);
    EXPECT_EQ(tensor.name, want["name"].get<std::string>());
    EXPECT_EQ(safetensors_dtype_name(tensor.dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(tensor.shape, want["shape"].get<std::vector<uint64_t>>());
    EXPECT_EQ(tensor.offset, want["offset"].get<uint64_t>());
    EXPECT_EQ(tensor.n_bytes, want["n_bytes"].get<uint64_t>());
    ASSERT_LE(tensor.offset + tensor.n_bytes, raw.size());
    EXPECT_EQ(std::memcmp(file.data(tensor), raw.data() + tensor.offset, tensor.n_bytes), 0);
    EXPECT_EQ(&file.tensor(tensor.name), &tensor);
    std::vector<float> values(tensor.numel);
    if (!want.contains("bits")) {
      EXPECT_FALSE(safetensors_dtype_reads_as_f32(tensor.dtype));
      test::expect_error([&] { file.read_f32(tensor, values.data()); }, safetensors_dtype_name(tensor.dtype));
      continue;
    }
    const auto bits = want["bits"].get<std::vector<uint32_t>>();
    ASSERT_EQ(tensor.numel, bits.size());
    file.read_f32(tensor, values.data());
    for (size_t j = 0; j < bits.size(); ++j) EXPECT_EQ(float_bits(values[j]), bits[j]) << "element " << j;
  }
}

TEST(SafetensorsReader, FixtureMatchesWhatWasWritten) {
  const SafetensorsFile file = SafetensorsFile::open(data_path("safetensors_small.safetensors"));
  expect_file_matches(file, expected_fixture()["small"]);
  EXPECT_EQ(file.find("__metadata__"), nullptr);
  EXPECT_EQ(file.find("missing"), nullptr);
  test::expect_error([&] { (void)file.tensor("missing"); }, "no tensor 'missing'");
}

TEST(SafetensorsReader, ShardsOfTheHfFixtureMatch) {
  const json expected = expected_fixture();
  for (const json& shard : expected["hf_shards"]) {
    const SafetensorsFile file = SafetensorsFile::open(data_path("hf_sharded/" + shard["file"].get<std::string>()));
    expect_file_matches(file, shard);
  }
}

// --- Hand-made files ------------------------------------------------------------------------------------

std::vector<uint8_t> make_file(std::string_view header, size_t data_bytes, uint64_t header_length) {
  std::vector<uint8_t> bytes(8);
  std::memcpy(bytes.data(), &header_length, 8);
  bytes.insert(bytes.end(), header.begin(), header.end());
  for (size_t i = 0; i < data_bytes; ++i) bytes.push_back(uint8_t(i * 7));
  return bytes;
}
std::vector<uint8_t> make_file(std::string_view header, size_t data_bytes) {
  return make_file(header, data_bytes, header.size());
}

class SafetensorsBadInput : public ::testing::Test {
 protected:
  std::string write(const std::vector<uint8_t>& bytes) { return dir_.write("bad.safetensors", bytes); }
  void expect_refused(const std::vector<uint8_t>& bytes, std::string_view needle) {
    const std::string path = write(bytes);
    test::expect_error([&] { (void)SafetensorsFile::open(path); }, needle);
  }
  void expect_refused(std::string_view header, size_t data_bytes, std::string_view needle) {
    expect_refused(make_file(header, data_bytes), needle);
  }
  test::TempDir dir_;
};

TEST_F(SafetensorsBadInput, SmallValidFilesOpen) {
  // A scalar, padding spaces after the JSON, and odd __metadata__ are all fine.
  const auto path = write(make_file(R"({"__metadata__": 5, "s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}})"
                                    "    ",
                                    4));
  const SafetensorsFile file = SafetensorsFile::open(path);
  ASSERT_EQ(file.tensors().size(), 1u);
  EXPECT_TRUE(file.tensor("s").shape.empty());
  EXPECT_EQ(file.tensor("s").numel, 1u);
  float value = 0;
  file.read_f32(file.tensor("s"), &value);
  const uint8_t want[4] = {0, 7, 14, 21};
  EXPECT_EQ(std::memcmp(&value, want, 4), 0);
  EXPECT_TRUE(SafetensorsFile::open(write(make_file("{}", 0))).tensors().empty());
}

TEST_F(SafetensorsBadInput, BadHeaderLengths) {
  expect_refused(std::vector<uint8_t>{}, "too short");
  expect_refused(std::vector<uint8_t>{2, 0, 0, 0, 0, 0, 0}, "too short");
  expect_refused(make_file("{}", 0, uint64_t(200) << 20), "over the 104857600-byte limit");
  expect_refused(make_file("{}", 0, UINT64_MAX), "over the");
  expect_refused(make_file("{}", 0, 3), "runs past the end");
}

TEST_F(SafetensorsBadInput, BadJson) {
  expect_refused("{\"a\": ", 0, "does not parse");
  expect_refused("[1, 2]", 0, "not an object");
  expect_refused("{\"a\": \"\xff\xfe\"}", 0, "does not parse");
  expect_refused("{\"a\": 3}", 0, "tensor 'a' is not a JSON object");
  expect_refused(R"({"": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 4, "empty name");
}

TEST_F(SafetensorsBadInput, BadDtypeOrShape) {
  expect_refused(R"({"a": {"shape": [1], "data_offsets": [0, 4]}})", 4, "'a' has no dtype");
  expect_refused(R"({"a": {"dtype": 3, "shape": [1], "data_offsets": [0, 4]}})", 4, "'a' has no dtype");
  expect_refused(R"({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 4]}})", 4, "unknown dtype 'F128'");
  expect_refused(R"({"a": {"dtype": "F32", "data_offsets": [0, 4]}})", 4, "no shape");
  expect_refused(R"({"a": {"dtype": "F32", "shape": 4, "data_offsets": [0, 4]}})", 4, "no shape");
  expect_refused(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4, "dim that is not");
  expect_refused(R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4, "dim that is not");
  expect_refused(R"({"a": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}})", 4, "dim that is not");
  expect_refused(R"({"a": {"dtype": "F32", "shape": [1,1,1,1,1,1,1,1,1], "data_offsets": [0, 4]}})", 4,
                 "9 dims");
  expect_refused(R"({"a": {"dtype": "F32", "shape": [1099511627776, 1099511627776], "data_offsets": [0, 4]}})", 4,
                 "63 bits");
  expect_refused(R"({"a": {"dtype": "F64", "shape": [2305843009213693952], "data_offsets": [0, 4]}})", 4,
                 "larger than fits");
  expect_refused(R"({"a": {"dtype": "F32", "shape": [99999999999999999999999], "data_offsets": [0, 4]}})", 4,
                 "dim that is not");
}

TEST_F(SafetensorsBadInput, BadDataOffsets) {
  expect_refused(R"({"a": {"dtype": "F32", "shape": [1]}})", 4, "no [begin, end] data_offsets");
  expect_refused(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 8, "data_offsets");
  expect_refused(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 4, "data offset that");
  expect_refused(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 8, "outside the 8-byte");
  expect_refused(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 7, "outside the 7-byte");
  expect_refused(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 18446744073709551615]}})", 4,
                 "outside");
  expect_refused(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", 8, "needs 8 bytes");
  expect_refused(R"({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 4]}})", 8, "needs 6 bytes");
}

TEST_F(SafetensorsBadInput, WideIntegersAreRefusedAsF32) {
  const auto path = write(make_file(R"({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]},
                                       "b": {"dtype": "U32", "shape": [1], "data_offsets": [8, 12]}})",
                                    12));
  const SafetensorsFile file = SafetensorsFile::open(path);
  float out[2];
  test::expect_error([&] { file.read_f32(file.tensor("a"), out); }, "dtype I64");
  test::expect_error([&] { file.read_f32(file.tensor("b"), out); }, "dtype U32");
}

TEST_F(SafetensorsBadInput, MissingFile) {
  test::expect_error([&] { (void)SafetensorsFile::open(dir_.file("absent.safetensors")); }, "absent.safetensors");
}

// --- Mutations of the committed fixture ---------------------------------------------------------------

bool open_and_read(const std::string& path) {
  try {
    const SafetensorsFile file = SafetensorsFile::open(path);
    std::vector<float> out;
    for (const SafetensorsTensor& tensor : file.tensors()) {
      if (!safetensors_dtype_reads_as_f32(tensor.dtype)) continue;
      out.resize(tensor.numel);
      file.read_f32(tensor, out.data());
    }
    return true;
  } catch (const Error&) {
    return false;
  }
}

class SafetensorsFixtureMutations : public SafetensorsBadInput {
 protected:
  void SetUp() override {
    original_ = test::read_bytes(data_path("safetensors_small.safetensors"));
    ASSERT_GT(original_.size(), 8u);
    std::memcpy(&header_end_, original_.data(), 8);
    header_end_ += 8;
  }
  // The mutated bytes written to a file and read as the runner would.
  auto opens() {
    return [this](const std::vector<uint8_t>& bytes) { return open_and_read(write(bytes)); };
  }
  std::vector<uint8_t> original_;
  uint64_t header_end_ = 0;
};

TEST_F(SafetensorsFixtureMutations, EveryTruncationIsRefused) {
  // The last tensor ends at the end of the file, so every shorter file misses some of it.
  for (size_t length = 0; length < original_.size(); ++length) {
    const std::vector<uint8_t> cut(original_.begin(), original_.begin() + long(length));
    EXPECT_FALSE(open_and_read(write(cut))) << "truncated to " << length << " bytes";
  }
  EXPECT_TRUE(open_and_read(write(original_)));
}

TEST_F(SafetensorsFixtureMutations, FlippedHeaderBytesNeverCrash) {
  EXPECT_GT(test::refused_header_flips(original_, header_end_, {0xff, 0x01, 0x10}, opens()), header_end_);
}

TEST_F(SafetensorsFixtureMutations, RandomHeaderOverwritesNeverCrash) {
  test::open_random_header_overwrites(original_, header_end_, 7, 2000,
                                      {'"', '{', '}', '[', ']', ',', ':', '-', '9', '0', ' ', 0x00, 0xff}, opens());
}

}  // namespace
}  // namespace kiln
