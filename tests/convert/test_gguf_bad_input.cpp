// The GGUF reader on broken and hostile files: every one must be refused with a one-line kiln::Error
// naming the problem, never a crash, an out-of-bounds read (run under the sanitizers) or another
// exception. Targeted cases are built byte by byte here; the fuzz-style cases mutate the committed
// synthetic fixture.
#include <gtest/gtest.h>

#include <bit>

#include "convert/gguf_reader.h"
#include "tests/convert/reader_test_util.h"

namespace kiln {
namespace {

using test::Bytes;

constexpr uint32_t kString = 8, kArray = 9, kU8 = 0, kU32 = 4, kBool = 7;
constexpr uint32_t kF32 = 0, kQ8_0 = 8, kQ4_K = 12;

Bytes kv_string(std::string_view key, std::string_view value) { return Bytes().str(key).u32(kString).str(value); }
Bytes kv_u32(std::string_view key, uint32_t value) { return Bytes().str(key).u32(kU32).u32(value); }

struct TinyTensor {
  std::string name;
  std::vector<uint64_t> ne;  // innermost first, as GGUF stores it
  uint32_t type = kF32;
  uint64_t offset = 0;
};

struct TinyGguf {
  uint32_t version = 3;
  std::vector<Bytes> kvs = {kv_string("general.architecture", "llama")};
  std::vector<TinyTensor> tensors = {{"w", {4, 2}, kF32, 0}};
  uint64_t alignment = 32;
  uint64_t data_bytes = 32;

  std::vector<uint8_t> build() const {
    Bytes out;
    out.raw("GGUF", 4).u32(version).u64(tensors.size()).u64(kvs.size());
    for (const Bytes& kv : kvs) out.append(kv);
    for (const TinyTensor& t : tensors) {
      out.str(t.name).u32(uint32_t(t.ne.size()));
      for (const uint64_t extent : t.ne) out.u64(extent);
      out.u32(t.type).u64(t.offset);
    }
    while (!tensors.empty() && out.data.size() % alignment != 0) out.u8(0);
    for (uint64_t i = 0; i < data_bytes; ++i) out.u8(uint8_t(i));
    return out.data;
  }
};

class GgufBadInput : public ::testing::Test {
 protected:
  std::string write(const std::vector<uint8_t>& bytes) { return dir_.write("bad.gguf", bytes); }
  void expect_refused(const std::vector<uint8_t>& bytes, std::string_view needle) {
    const std::string path = write(bytes);
    test::expect_error([&] { (void)GgufFile::open(path); }, needle);
  }
  void expect_refused(const TinyGguf& gguf, std::string_view needle) { expect_refused(gguf.build(), needle); }
  test::TempDir dir_;
};

TEST_F(GgufBadInput, TheUnbrokenTinyFileOpens) {
  const GgufFile gguf = GgufFile::open(write(TinyGguf().build()));
  ASSERT_EQ(gguf.tensors().size(), 1u);
  EXPECT_EQ(gguf.tensors()[0].shape, (std::vector<uint64_t>{2, 4}));
  EXPECT_EQ(gguf.tensors()[0].offset, gguf.data_offset());
  std::vector<float> out(8);
  gguf.dequantize(gguf.tensors()[0], out.data());
  EXPECT_EQ(out[1], std::bit_cast<float>(uint32_t(0x07060504)));  // the data bytes count up from 0
  EXPECT_EQ(gguf.get_string("general.architecture"), "llama");
  TinyGguf v2;
  v2.version = 2;
  EXPECT_EQ(GgufFile::open(write(v2.build())).version(), 2u);
}

TEST_F(GgufBadInput, FileWithoutTensorsMayEndRightAfterItsMetadata) {
  TinyGguf gguf;
  gguf.tensors.clear();
  gguf.data_bytes = 0;
  EXPECT_TRUE(GgufFile::open(write(gguf.build())).tensors().empty());
}

TEST_F(GgufBadInput, WrongMagicOrVersion) {
  auto bytes = TinyGguf().build();
  bytes[3] = 'X';
  expect_refused(bytes, "GGUF magic");
  expect_refused(std::vector<uint8_t>{}, "GGUF magic");
  expect_refused(std::vector<uint8_t>{'G', 'G', 'U'}, "GGUF magic");
  expect_refused(std::vector<uint8_t>{'G', 'G', 'U', 'F', 3, 0}, "ends inside the version");
  TinyGguf gguf;
  gguf.version = 1;
  expect_refused(gguf, "version 1 is too old");
  gguf.version = 4;
  expect_refused(gguf, "unsupported GGUF version 4");
  gguf.version = 0x03000000;  // version 3 written big-endian
  expect_refused(gguf, "big-endian");
}

TEST_F(GgufBadInput, AbsurdCounts) {
  auto bytes = TinyGguf().build();
  std::fill(bytes.begin() + 8, bytes.begin() + 16, 0xff);
  expect_refused(bytes, "claims 18446744073709551615 tensors");
  bytes = TinyGguf().build();
  std::fill(bytes.begin() + 16, bytes.begin() + 24, 0xff);
  expect_refused(bytes, "metadata keys");
  bytes = TinyGguf().build();
  bytes[16] = 200;  // more keys than written: the parser runs into the tensor infos and then the end
  expect_refused(bytes, "cannot read GGUF");
}

TEST_F(GgufBadInput, AbsurdStringLengths) {
  TinyGguf gguf;
  gguf.kvs = {Bytes().u64(uint64_t(1) << 62).raw("general.architecture", 20)};
  expect_refused(gguf, "metadata key at byte 24 claims 4611686018427387904 bytes");
  gguf.kvs = {Bytes().str("k").u32(kString).u64(UINT64_MAX)};
  expect_refused(gguf, "string value");
  auto bytes = TinyGguf().build();
  const long name_length_at = 24 + (8 + 20) + 4 + (8 + 5);  // header, then the one metadata entry
  std::fill(bytes.begin() + name_length_at, bytes.begin() + name_length_at + 8, 0x7f);
  expect_refused(bytes, "tensor name");
}

TEST_F(GgufBadInput, BadMetadataValues) {
  TinyGguf gguf;
  gguf.kvs = {Bytes().str("k").u32(13).u32(0)};
  expect_refused(gguf, "unknown metadata value type 13");
  gguf.kvs = {Bytes().str("k").u32(kBool).u8(2)};
  expect_refused(gguf, "neither 0 nor 1");
  gguf.kvs = {Bytes().str("").u32(kU8).u8(1)};
  expect_refused(gguf, "empty key");
  gguf.kvs = {kv_u32("k", 1), kv_u32("k", 2)};
  expect_refused(gguf, "'k' appears twice");
  gguf.kvs = {Bytes().str("k").u32(kArray).u32(kU8).u64(uint64_t(1) << 62)};
  expect_refused(gguf, "claims 4611686018427387904 elements of type u8");
  gguf.kvs = {Bytes().str("k").u32(kArray).u32(kString).u64(1000).u64(0)};
  expect_refused(gguf, "elements of type string");
  gguf.kvs = {Bytes().str("k").u32(kArray).u32(77).u64(1)};
  expect_refused(gguf, "unknown metadata value type 77");
}

TEST_F(GgufBadInput, DeepOrManyNestedArrays) {
  Bytes deep;
  deep.str("k").u32(kArray);
  for (int level = 0; level < 10; ++level) deep.u32(kArray).u64(1);
  deep.u32(kU8).u64(0);
  TinyGguf gguf;
  gguf.kvs = {deep};
  expect_refused(gguf, "nest deeper than 4");

  Bytes many;
  many.str("k").u32(kArray).u32(kArray).u64(70000);
  for (int i = 0; i < 70000; ++i) many.u32(kU8).u64(0);
  gguf.kvs = {many};
  expect_refused(gguf, "nested metadata arrays");

  // 2^25 + 1 one-byte elements in all, split over two arrays: each fits the file, together too many.
  Bytes big_a, big_b;
  const uint64_t half = (uint64_t(1) << 24) + 1;
  big_a.str("a").u32(kArray).u32(kU8).u64(half);
  big_a.data.resize(big_a.data.size() + half);
  big_b.str("b").u32(kArray).u32(kU8).u64(half);
  big_b.data.resize(big_b.data.size() + half);
  gguf.kvs = {big_a, big_b};
  expect_refused(gguf, "more than 33554432 elements in all");
}

TEST_F(GgufBadInput, BadAlignment) {
  TinyGguf gguf;
  gguf.kvs = {kv_string("general.alignment", "32")};
  expect_refused(gguf, "general.alignment is a string, not a u32");
  gguf.kvs = {kv_u32("general.alignment", 0)};
  expect_refused(gguf, "not a power of two");
  gguf.kvs = {kv_u32("general.alignment", 48)};
  expect_refused(gguf, "48 is not a power of two");
  gguf.kvs = {kv_u32("general.alignment", 64)};
  gguf.alignment = 64;
  EXPECT_EQ(GgufFile::open(write(gguf.build())).data_offset() % 64, 0u);
  gguf.tensors.push_back({"v", {8}, kF32, 32});  // 32 is not a multiple of 64
  gguf.data_bytes = 64;
  expect_refused(gguf, "tensor 'v' starts at offset 32, not a multiple of the alignment 64");
}

TEST_F(GgufBadInput, BadTensorInfos) {
  const auto with_tensor = [](TinyTensor tensor, uint64_t data_bytes = 32) {
    TinyGguf gguf;
    gguf.tensors = {std::move(tensor)};
    gguf.data_bytes = data_bytes;
    return gguf;
  };
  expect_refused(with_tensor({"w", {}, kF32, 0}), "'w' has 0 dims");
  expect_refused(with_tensor({"w", {1, 1, 1, 1, 8}, kF32, 0}), "'w' has 5 dims");
  expect_refused(with_tensor({"w", {4, 0}, kF32, 0}), "zero-sized dim");
  expect_refused(with_tensor({"w", {uint64_t(1) << 32, uint64_t(1) << 32}, kF32, 0}), "63 bits");
  expect_refused(with_tensor({"w", {uint64_t(1) << 62}, kF32, 0}), "larger than fits");
  expect_refused(with_tensor({"w", {8}, 4, 0}), "unknown GGML type id 4");
  expect_refused(with_tensor({"w", {8}, 1000, 0}), "unknown GGML type id 1000");
  expect_refused(with_tensor({"w", {33, 2}, kQ8_0, 0}, 100), "not a multiple of its block size 32");
  expect_refused(with_tensor({"w", {8}, kF32, 4}), "not a multiple of the alignment 32");
  expect_refused(with_tensor({"w", {8}, kF32, 32}), "runs past the end of the file");
  expect_refused(with_tensor({"w", {8}, kF32, UINT64_MAX - 31}), "runs past the end of the file");
  expect_refused(with_tensor({"w", {8}, kF32, 0}, 31), "runs past the end of the file");
  expect_refused(with_tensor({"", {8}, kF32, 0}), "empty name");

  TinyGguf twice;
  twice.tensors = {{"w", {8}, kF32, 0}, {"w", {8}, kF32, 0}};
  expect_refused(twice, "tensor 'w' appears twice");
}

TEST_F(GgufBadInput, UnsupportedTypeIsListedButNotDequantized) {
  TinyGguf gguf;
  gguf.tensors = {{"k_quant", {256}, kQ4_K, 0}};
  gguf.data_bytes = 144;
  const GgufFile file = GgufFile::open(write(gguf.build()));
  EXPECT_EQ(ggml_type_name(file.tensor("k_quant").type), "Q4_K");
  std::vector<float> out(256);
  test::expect_error([&] { file.dequantize(file.tensor("k_quant"), out.data()); }, "GGML type Q4_K");
}

TEST_F(GgufBadInput, MissingFileOrFolder) {
  test::expect_error([&] { (void)GgufFile::open(dir_.file("absent.gguf")); }, "absent.gguf");
  test::expect_error([&] { (void)GgufFile::open(dir_.path().string()); }, "not a regular file");
}

// --- Mutations of the committed fixture ---------------------------------------------------------------

// Opens a mutated file; when it opens, reads every tensor it can. Any failure must be a kiln::Error.
bool open_and_read(const std::string& path) {
  try {
    const GgufFile gguf = GgufFile::open(path);
    std::vector<float> out;
    for (const GgufTensor& tensor : gguf.tensors()) {
      if (!ggml_type_info(uint32_t(tensor.type))->dequantizable) continue;
      out.resize(tensor.numel);
      gguf.dequantize(tensor, out.data());
    }
    return true;
  } catch (const Error&) {
    return false;
  }
}

class GgufFixtureMutations : public GgufBadInput {
 protected:
  void SetUp() override {
    original_ = test::read_bytes(test::data_path("gguf_all_types.gguf"));
    const GgufFile gguf = GgufFile::open(test::data_path("gguf_all_types.gguf"));
    header_end_ = gguf.data_offset();
    for (const GgufTensor& tensor : gguf.tensors()) data_end_ = std::max(data_end_, tensor.offset + tensor.n_bytes);
    ASSERT_LT(header_end_, original_.size());
  }
  // The mutated bytes written to a file and read as the runner would.
  auto opens() {
    return [this](const std::vector<uint8_t>& bytes) { return open_and_read(write(bytes)); };
  }
  std::vector<uint8_t> original_;
  uint64_t header_end_ = 0;
  uint64_t data_end_ = 0;
};

TEST_F(GgufFixtureMutations, EveryTruncationBeforeTheLastTensorEndIsRefused) {
  for (size_t length = 0; length < original_.size(); ++length) {
    const std::vector<uint8_t> cut(original_.begin(), original_.begin() + long(length));
    const bool opened = open_and_read(write(cut));
    EXPECT_EQ(opened, length >= data_end_) << "truncated to " << length << " bytes";
  }
}

TEST_F(GgufFixtureMutations, FlippedHeaderBytesNeverCrash) {
  const size_t refused = test::refused_header_flips(original_, header_end_, {0xff, 0x01, 0x80}, opens());
  // Most flips hit a length, count, type or offset; flips inside names and values may still parse.
  EXPECT_GT(refused, header_end_);
}

TEST_F(GgufFixtureMutations, RandomHeaderOverwritesNeverCrash) {
  test::open_random_header_overwrites(original_, header_end_, 20240611, 3000, {0x00, 0xff, 0x7f, 0x80, 0x01, 0x40},
                                      opens());
}

}  // namespace
}  // namespace kiln
