// The .kiln writer and loader: round trip of every dtype, checksums, and hostile files.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include "convert/quantize.h"
#include "engine/checksum.h"
#include "engine/error.h"
#include "engine/half.h"
#include "engine/kiln_file.h"
#include "tests/convert/kiln_file_fixture.h"

namespace kiln {
namespace {

using testing::TempDir;

std::vector<float> random_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.5f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Writes one tensor per dtype of a [rows, cols] matrix; returns the source values.
std::vector<float> write_all_dtypes(const std::string& path, int64_t rows, int64_t cols) {
  auto values = std::make_shared<std::vector<float>>(random_values(size_t(rows * cols), 7));
  KilnWriter writer(testing::tiny_metadata());
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I8}) {
    TensorSpec spec{std::string("w.") + std::string(dtype_name(dtype)), dtype, {rows, cols},
                    dtype == DType::I8 ? 32u : 0u};
    writer.add(spec, [=](std::span<uint8_t> out, std::span<uint8_t> scales) {
      quantize_rows(values->data(), rows, cols, dtype, spec.group_size, out, scales);
    });
  }
  writer.add({"norm", DType::F32, {cols}, 0}, [=](std::span<uint8_t> out, std::span<uint8_t>) {
    std::memcpy(out.data(), values->data(), out.size());
  });
  writer.write(path, false);
  return *values;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// Rewrites the header checksum so that a deliberate field change reaches the field's own check;
// `layout` is the undamaged header (the damaged one may point anywhere).
void reseal(std::vector<uint8_t>& bytes, const FileHeader& layout) {
  FileHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  h.header_checksum = 0;
  uint32_t crc = crc32c(&h, sizeof h);
  crc = crc32c(bytes.data() + layout.metadata_offset, layout.metadata_bytes, crc);
  crc = crc32c(bytes.data() + layout.table_offset, layout.table_bytes, crc);
  h.header_checksum = crc;
  std::memcpy(bytes.data(), &h, sizeof h);
}

void expect_open_fails(const std::string& path, const std::string& expected_part) {
  try {
    (void)KilnFile::open(path);
    ADD_FAILURE() << "opening the damaged file succeeded; expected an error with '" << expected_part << "'";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(expected_part), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << "the message must be one line: " << message;
  }
}

TEST(Checksum, MatchesTheCrc32cCheckValue) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // the published CRC-32C check value
  const std::string text = "The quick brown fox jumps over the lazy dog, again and again and again.";
  EXPECT_EQ(crc32c(text.data() + 10, text.size() - 10, crc32c(text.data(), 10)), crc32c(text.data(), text.size()));
}

TEST(KilnFile, RoundTripsEveryDtype) {
  TempDir dir;
  const int64_t rows = 7, cols = 96;
  const auto source = write_all_dtypes(dir.file("m.kiln"), rows, cols);
  const KilnFile file = KilnFile::open(dir.file("m.kiln"));
  EXPECT_EQ(file.config().dim, 64);
  EXPECT_EQ(file.tokenizer_data().tokens.size(), 32u);
  EXPECT_EQ(file.tensors().size(), 5u);
  EXPECT_TRUE(file.verify().empty());

  for (const auto& t : file.tensors()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % kKilnTensorAlign, 0u) << t.name;
    if (t.name == "norm") continue;
    ASSERT_EQ(t.rows(), rows);
    ASSERT_EQ(t.cols(), cols);
    std::vector<float> back(size_t(rows * cols));
    std::span<const uint8_t> values(static_cast<const uint8_t*>(t.data), t.bytes);
    std::span<const uint8_t> scales(reinterpret_cast<const uint8_t*>(t.scales),
                                    t.scales ? size_t(rows * cols / t.group_size * 2) : 0);
    dequantize_rows(values, scales, rows, cols, t.dtype, t.group_size, back.data());
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float x = source[size_t(i)];
      float bound = 0;  // the storage type's rounding error
      if (t.dtype == DType::F16) bound = std::fabs(x) * 0x1p-11f + 0x1p-25f;
      if (t.dtype == DType::BF16) bound = std::fabs(x) * 0x1p-8f;
      if (t.dtype == DType::I8) {
        float max_abs = 0;
        const int64_t g0 = i / 32 * 32;
        for (int64_t j = g0; j < g0 + 32; ++j) max_abs = std::max(max_abs, std::fabs(source[size_t(j)]));
        bound = max_abs / 127.0f * 0.5f * 1.002f;  // half a step, plus the fp16 rounding of the scale
      }
      ASSERT_LE(std::fabs(back[size_t(i)] - x), bound) << t.name << " element " << i;
    }
  }
  EXPECT_THROW(file.get("w.f32", {cols, rows}), Error);
  EXPECT_THROW(file.get("missing", {1}), Error);
  EXPECT_EQ(file.get("w.int8", {rows, cols}).group_size, 32u);
}

TEST(KilnFile, RefusesToOverwriteWithoutForce) {
  TempDir dir;
  write_all_dtypes(dir.file("m.kiln"), 2, 32);
  EXPECT_THROW(write_all_dtypes(dir.file("m.kiln"), 2, 32), Error);
  KilnWriter writer(testing::tiny_metadata());
  writer.write(dir.file("m.kiln"), true);
  EXPECT_TRUE(KilnFile::open(dir.file("m.kiln")).tensors().empty());
}

TEST(KilnFile, VerifyNamesTheDamagedTensor) {
  TempDir dir;
  write_all_dtypes(dir.file("m.kiln"), 3, 64);
  auto bytes = read_bytes(dir.file("m.kiln"));
  const std::string target = "w.bf16";
  FileHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  TensorRecord r;
  size_t cursor = h.table_offset;
  for (;;) {
    std::memcpy(&r, bytes.data() + cursor, sizeof r);
    if (std::string(reinterpret_cast<const char*>(bytes.data() + cursor + sizeof r), r.name_bytes) == target) break;
    cursor += sizeof r + align_up(r.name_bytes, 8);
  }
  bytes[h.data_offset + r.offset + 5] ^= 0x10;
  write_bytes(dir.file("m.kiln"), bytes);
  const KilnFile file = KilnFile::open(dir.file("m.kiln"));  // the header is intact
  EXPECT_EQ(file.verify(), std::vector<std::string>{target});
}

TEST(KilnFile, EveryTruncationIsAnError) {
  TempDir dir;
  write_all_dtypes(dir.file("m.kiln"), 3, 64);
  const auto bytes = read_bytes(dir.file("m.kiln"));
  FileHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  // Every length through the header, metadata and table, then a sample through the data.
  std::vector<size_t> lengths;
  for (size_t n = 0; n < h.data_offset; n += (n < h.table_offset + h.table_bytes ? 1 : 97)) lengths.push_back(n);
  for (size_t n = h.data_offset; n < bytes.size(); n += 61) lengths.push_back(n);
  for (size_t n : lengths) {
    write_bytes(dir.file("cut.kiln"), std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(n)));
    EXPECT_THROW((void)KilnFile::open(dir.file("cut.kiln")), Error) << "truncated to " << n << " bytes";
  }
}

TEST(KilnFile, FlippedHeaderOrTableBytesAreErrors) {
  TempDir dir;
  write_all_dtypes(dir.file("m.kiln"), 3, 64);
  const auto bytes = read_bytes(dir.file("m.kiln"));
  FileHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  const size_t end = h.table_offset + h.table_bytes;
  for (size_t i = 0; i < end; ++i) {
    if (i >= h.metadata_offset + h.metadata_bytes && i < h.table_offset) continue;  // padding, not covered
    if (i >= offsetof(FileHeader, reserved0) && i < sizeof(FileHeader)) continue;  // reserved fields
    auto damaged = bytes;
    damaged[i] ^= 0x04;
    write_bytes(dir.file("flip.kiln"), damaged);
    EXPECT_THROW((void)KilnFile::open(dir.file("flip.kiln")), Error) << "flipped byte " << i;
  }
}

TEST(KilnFile, HostileFieldsAreNamed) {
  TempDir dir;
  write_all_dtypes(dir.file("m.kiln"), 3, 64);
  const auto good = read_bytes(dir.file("m.kiln"));
  FileHeader h;
  std::memcpy(&h, good.data(), sizeof h);
  const std::string path = dir.file("bad.kiln");

  auto with_header = [&](auto edit) {
    auto bytes = good;
    FileHeader copy;
    std::memcpy(&copy, bytes.data(), sizeof copy);
    edit(copy);
    std::memcpy(bytes.data(), &copy, sizeof copy);
    reseal(bytes, h);
    write_bytes(path, bytes);
  };
  auto with_record = [&](auto edit) {  // edits the first tensor record
    auto bytes = good;
    TensorRecord r;
    std::memcpy(&r, bytes.data() + h.table_offset, sizeof r);
    edit(r);
    std::memcpy(bytes.data() + h.table_offset, &r, sizeof r);
    reseal(bytes, h);
    write_bytes(path, bytes);
  };

  with_header([](FileHeader& x) { x.magic[0] = 'G'; });
  expect_open_fails(path, "bad magic");
  with_header([](FileHeader& x) { x.version = 99; });
  expect_open_fails(path, "version 99");
  with_header([](FileHeader& x) { x.metadata_bytes = ~uint64_t(0) - 10; });
  expect_open_fails(path, "metadata");
  with_header([](FileHeader& x) { x.tensor_count = uint64_t(1) << 40; });
  expect_open_fails(path, "tensors cannot fit");
  with_header([](FileHeader& x) { x.data_offset += 1; });
  expect_open_fails(path, "tensor data");
  with_record([](TensorRecord& r) { r.dtype = 77; });
  expect_open_fails(path, "unknown dtype 77");
  with_record([](TensorRecord& r) { r.dims[0] = uint64_t(1) << 62; });
  expect_open_fails(path, "invalid dim");
  with_record([](TensorRecord& r) { r.offset = uint64_t(1) << 50; });
  expect_open_fails(path, "outside the data section");
  with_record([](TensorRecord& r) { r.n_dims = 9; });
  expect_open_fails(path, "dims");
  with_record([](TensorRecord& r) { r.name_bytes = 1u << 30; });
  expect_open_fails(path, "name length");

  write_bytes(path, std::vector<uint8_t>(good.begin(), good.begin() + 100));
  expect_open_fails(path, "too short");
  expect_open_fails(dir.file("absent.kiln"), "cannot open");
}

TEST(KilnFile, KilledWriterLeavesNoPartialFileAfterTheNextRun) {
  TempDir dir;
  const std::string out = dir.file("m.kiln");
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  if (child == 0) {  // writes one tensor, signals, then hangs in the middle of the second
    KilnWriter writer(testing::tiny_metadata());
    writer.add({"a", DType::F32, {64}, 0}, [](std::span<uint8_t>, std::span<uint8_t>) {});
    writer.add({"b", DType::F32, {64}, 0}, [&](std::span<uint8_t>, std::span<uint8_t>) {
      (void)!::write(ready[1], "x", 1);
      ::pause();
    });
    writer.write(out, false);
    ::_exit(0);
  }
  char byte;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_TRUE(std::filesystem::exists(partial_path(out, child)));

  write_all_dtypes(out, 2, 32);  // the next run cleans up after the killed one
  EXPECT_FALSE(std::filesystem::exists(partial_path(out, child)));
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++entries;
  EXPECT_EQ(entries, 1u);
  EXPECT_NO_THROW((void)KilnFile::open(out));
}

TEST(KilnFile, FailedProducerRemovesTheTempFile) {
  TempDir dir;
  KilnWriter writer(testing::tiny_metadata());
  writer.add({"a", DType::F32, {64}, 0}, [](std::span<uint8_t>, std::span<uint8_t>) { fail("source unreadable"); });
  EXPECT_THROW(writer.write(dir.file("m.kiln"), false), Error);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace kiln
