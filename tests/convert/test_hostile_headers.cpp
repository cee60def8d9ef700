// Hostile headers: counts, lengths, dimensions and nesting far beyond what the file holds. Each must be
// refused fast (well under a second) with a one-line message, having allocated little: this binary
// counts the heap bytes live during each attempt, and the bound is what the file could justify.
#include <gtest/gtest.h>
#include <malloc.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <new>

#include "convert/from_gguf.h"
#include "convert/from_hf.h"
#include "convert/gguf_reader.h"
#include "convert/hf_folder.h"
#include "convert/kiln_writer.h"
#include "convert/safetensors_reader.h"
#include "engine/checksum.h"
#include "engine/kiln_file.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/convert/reader_test_util.h"

namespace {

std::atomic<int64_t> g_live_bytes{0};
std::atomic<int64_t> g_peak_bytes{0};

void* counted(void* p) {
  if (p == nullptr) throw std::bad_alloc();
  const int64_t live = g_live_bytes.fetch_add(int64_t(malloc_usable_size(p))) + int64_t(malloc_usable_size(p));
  int64_t peak = g_peak_bytes.load();
  while (live > peak && !g_peak_bytes.compare_exchange_weak(peak, live)) {
  }
  return p;
}
void uncounted(void* p) {
  if (p == nullptr) return;
  g_live_bytes.fetch_sub(int64_t(malloc_usable_size(p)));
  std::free(p);
}

}  // namespace

void* operator new(std::size_t bytes) { return counted(std::malloc(bytes ? bytes : 1)); }
void* operator new[](std::size_t bytes) { return counted(std::malloc(bytes ? bytes : 1)); }
void* operator new(std::size_t bytes, std::align_val_t align) {
  const auto a = static_cast<std::size_t>(align);
  return counted(std::aligned_alloc(a, (bytes + a - 1) / a * a));
}
void operator delete(void* p) noexcept { uncounted(p); }
void operator delete[](void* p) noexcept { uncounted(p); }
void operator delete(void* p, std::size_t) noexcept { uncounted(p); }
void operator delete[](void* p, std::size_t) noexcept { uncounted(p); }
void operator delete(void* p, std::align_val_t) noexcept { uncounted(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { uncounted(p); }

namespace kiln {
namespace {

constexpr int64_t kSmallHeap = int64_t(1) << 20;  // what refusing a hostile header may allocate

// Runs fn, which must throw a one-line kiln::Error containing needle, within a second and with at most
// max_heap_bytes more heap live at any moment than before.
template <typename Fn>
void expect_refused_cheaply(Fn&& fn, std::string_view needle, int64_t max_heap_bytes = kSmallHeap) {
  const int64_t before = g_live_bytes.load();
  g_peak_bytes.store(before);
  const auto start = std::chrono::steady_clock::now();
  test::expect_error(fn, needle);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 1.0) << needle;
  EXPECT_LE(g_peak_bytes.load() - before, max_heap_bytes) << needle;
}

using test::Bytes;

Bytes gguf_header(uint64_t n_tensors, uint64_t n_keys) {
  Bytes b;
  b.raw("GGUF", 4).u32(3).u64(n_tensors).u64(n_keys);
  return b;
}

class Hostile : public ::testing::Test {
 protected:
  std::string write(const std::string& name, const std::vector<uint8_t>& bytes) { return dir_.write(name, bytes); }
  std::string write_text(const std::string& name, std::string_view text) {
    test::write_text(dir_.file(name), text);
    return dir_.file(name);
  }
  test::TempDir dir_;
};

TEST_F(Hostile, GgufCountsAndLengthsBeyondTheFile) {
  const auto open = [&](const Bytes& b) { return [&, path = write("h.gguf", b.data)] { (void)GgufFile::open(path); }; };
  expect_refused_cheaply(open(gguf_header(uint64_t(1) << 60, 0).zeros(64)), "tensors, more than the file could hold");
  expect_refused_cheaply(open(gguf_header(0, uint64_t(1) << 60).zeros(64)), "metadata keys, more than the file");
  expect_refused_cheaply(open(gguf_header(0, 1).u64(uint64_t(1) << 62).zeros(64)), "claims 4611686018427387904 bytes");
  // An array of 2^24 strings (each at least 8 bytes on disk) in a file of a few hundred bytes.
  expect_refused_cheaply(open(gguf_header(0, 1).str("tokens").u32(9).u32(8).u64(uint64_t(1) << 24).zeros(256)),
                         "claims 16777216 elements of type string");
  // A tensor of 2^32 x 2^32 x 2^32 elements.
  Bytes huge = gguf_header(1, 0);
  huge.str("w").u32(3).u64(uint64_t(1) << 32).u64(uint64_t(1) << 32).u64(uint64_t(1) << 32).u32(0).u64(0).zeros(64);
  expect_refused_cheaply(open(huge), "more elements than fit in 63 bits");
  // A tensor the header places 1 TB into a 100-byte data section.
  Bytes far = gguf_header(1, 0);
  far.str("w").u32(1).u64(8).u32(0).u64(uint64_t(1) << 40).zeros(100);
  expect_refused_cheaply(open(far), "runs past the end of the file");
}

// A llama GGUF whose metadata claims a model far larger than its tensors.
TEST_F(Hostile, GgufModelSizesBeyondTheirTensors) {
  const auto kv_u64 = [](Bytes& b, std::string_view key, uint64_t v) { b.str(key).u32(10).u64(v); };
  for (const auto& [key, value, needle] : {std::tuple{"llama.block_count", uint64_t(1) << 40, "n_layers"},
                                           std::tuple{"llama.embedding_length", uint64_t(1) << 40, "dim"},
                                           std::tuple{"llama.feed_forward_length", uint64_t(1) << 40, "ffn_dim"},
                                           std::tuple{"llama.context_length", uint64_t(1) << 40, "n_ctx_train"}}) {
    Bytes b = gguf_header(1, 10);
    b.str("general.architecture").u32(8).str("llama");
    b.str("tokenizer.ggml.model").u32(8).str("gpt2");
    b.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(2).str("a").str("b");
    const std::pair<const char*, uint64_t> fields[] = {{"llama.block_count", 1},
                                                       {"llama.embedding_length", 8},
                                                       {"llama.attention.head_count", 2},
                                                       {"llama.feed_forward_length", 16},
                                                       {"llama.context_length", 64},
                                                       {"llama.rope.dimension_count", 4},
                                                       {"llama.attention.head_count_kv", 2}};
    for (const auto& [name, normal] : fields) kv_u64(b, name, std::string_view(name) == key ? value : normal);
    b.str("token_embd.weight").u32(2).u64(8).u64(2).u32(0).u64(0);
    while (b.data.size() % 32) b.zeros(1);
    b.zeros(64);
    const std::string path = write("m.gguf", b.data);
    const GgufFile gguf = GgufFile::open(path);
    expect_refused_cheaply([&] { (void)conversion_from_gguf(gguf); }, needle);
  }
}

TEST_F(Hostile, SafetensorsHeaders) {
  const auto open = [&](const Bytes& b) { return [&, path = write("h.safetensors", b.data)] {
    (void)SafetensorsFile::open(path); }; };
  expect_refused_cheaply(open(Bytes().u64(uint64_t(1) << 63).zeros(16)), "over the");
  expect_refused_cheaply(open(Bytes().u64((uint64_t(100) << 20) - 1).zeros(16)), "runs past the end");
  const auto header = [](std::string_view json) { return Bytes().u64(json.size()).raw(json.data(), json.size()); };
  expect_refused_cheaply(
      open(header(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 4]}})")
               .zeros(4)),
      "more elements than fit in 63 bits");
  expect_refused_cheaply(
      open(header(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 9223372036854775807]}})").zeros(4)),
      "outside the 4-byte data section");
  // A million levels of nesting in 2 MB: parsing it is linear, but copying or printing it would recurse
  // a million deep.
  const std::string deep = "{\"w\": " + std::string(1'000'000, '[') + std::string(1'000'000, ']') + "}";
  expect_refused_cheaply(open(header(deep)), "nests arrays or objects deeper than 64 levels");
}

// A .kiln file with this metadata and one tensor; `patch` edits the raw bytes, and the header checksum
// is then recomputed so the loader reaches the field under test.
std::vector<uint8_t> kiln_bytes(const nlohmann::json& metadata, const std::string& path,
                                const std::function<void(std::vector<uint8_t>&, FileHeader&)>& patch = {}) {
  KilnWriter writer(metadata);
  writer.add({"w", DType::F32, {4}, 0}, [](std::span<uint8_t> out, std::span<uint8_t>) {
    std::fill(out.begin(), out.end(), uint8_t(0));
  });
  writer.write(path, true);
  std::vector<uint8_t> bytes = test::read_bytes(path);
  FileHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  if (patch) patch(bytes, h);
  h.header_checksum = 0;
  uint32_t crc = crc32c(&h, sizeof h);
  crc = crc32c(bytes.data() + h.metadata_offset, h.metadata_bytes, crc);
  crc = crc32c(bytes.data() + h.table_offset, h.table_bytes, crc);
  h.header_checksum = crc;
  std::memcpy(bytes.data(), &h, sizeof h);
  return bytes;
}

TEST_F(Hostile, KilnModelAndTokenizerMetadata) {
  const std::string path = dir_.file("m.kiln");
  const auto open = [&](const std::vector<uint8_t>& bytes) {
    return [&, p = write("h.kiln", bytes)] { (void)KilnFile::open(p).tokenizer_data(); };
  };
  for (const auto& [field, value] : {std::pair{"n_vocab", int64_t(1) << 40}, std::pair{"n_layers", int64_t(1) << 40},
                                     std::pair{"dim", int64_t(1) << 40}, std::pair{"head_dim", int64_t(1) << 40},
                                     std::pair{"n_ctx_train", int64_t(1) << 40}, std::pair{"n_heads", int64_t(-1)}}) {
    nlohmann::json metadata = testing::tiny_metadata();
    metadata["model"][field] = value;
    expect_refused_cheaply(open(kiln_bytes(metadata, path)), std::string("model field '") + field + "'");
  }
  // More tokens than the model has embeddings, and token ids far outside the vocabulary.
  nlohmann::json metadata = testing::tiny_metadata();
  metadata["tokenizer"]["tokens"] = std::vector<std::string>(5000, "x");
  expect_refused_cheaply(open(kiln_bytes(metadata, path)), "5000 tokens but the model only 32");
  metadata = testing::tiny_metadata();
  metadata["tokenizer"]["bos_id"] = int64_t(1) << 32;
  expect_refused_cheaply(open(kiln_bytes(metadata, path)), "bos_id");
  metadata = testing::tiny_metadata();
  metadata["tokenizer"]["scores"] = std::vector<double>(32, 1e300);
  expect_refused_cheaply(open(kiln_bytes(metadata, path)), "scores");

  // A metadata string replaced, byte for byte, by 100000 levels of nesting.
  metadata = testing::tiny_metadata();
  metadata["padding"] = std::string(199'998, 'a');
  const auto nest = [](std::vector<uint8_t>& bytes, FileHeader& h) {
    const auto begin = bytes.begin() + int64_t(h.metadata_offset);
    const std::string quoted = "\"" + std::string(199'998, 'a') + "\"";
    const auto found = std::search(begin, begin + int64_t(h.metadata_bytes), quoted.begin(), quoted.end());
    ASSERT_NE(found, begin + int64_t(h.metadata_bytes));
    std::fill(found, found + 100'000, uint8_t('['));
    std::fill(found + 100'000, found + 200'000, uint8_t(']'));
  };
  expect_refused_cheaply(open(kiln_bytes(metadata, path, nest)), "nests arrays or objects deeper than 64 levels");

  // Table fields: a tensor count the table cannot hold, and a name of 4 GB.
  expect_refused_cheaply(open(kiln_bytes(testing::tiny_metadata(), path,
                                         [](std::vector<uint8_t>&, FileHeader& h) { h.tensor_count = 1u << 20; })),
                         "tensors cannot fit a table");
  expect_refused_cheaply(open(kiln_bytes(testing::tiny_metadata(), path,
                                         [](std::vector<uint8_t>& bytes, FileHeader& h) {
                                           TensorRecord r;
                                           std::memcpy(&r, bytes.data() + h.table_offset, sizeof r);
                                           r.name_bytes = ~0u;
                                           std::memcpy(bytes.data() + h.table_offset, &r, sizeof r);
                                         })),
                         "bad name length");
}

// Files a Hugging Face folder holds, each far larger than it claims to be or than any real one.
TEST_F(Hostile, HuggingFaceFolderFiles) {
  const std::string folder = dir_.path().string();
  test::write_text(dir_.file("config.json"), R"({"model_type": "llama"})");
  test::write_text(dir_.file("model.safetensors"), std::string("\x02\0\0\0\0\0\0\0{}", 10));
  // config.json of 65 MB (sparse, so the test writes nothing): refused by its size, before it is read.
  std::filesystem::resize_file(dir_.file("config.json"), (uint64_t(65) << 20));
  expect_refused_cheaply([&] { (void)HfFolder::open(folder); }, "over the 67108864-byte limit for this file");

  const std::string llama = R"({"model_type": "llama", "vocab_size": 32, "hidden_size": 8, "intermediate_size": 16,
    "num_attention_heads": 2, "num_hidden_layers": 1099511627776})";
  test::write_text(dir_.file("config.json"), llama);
  expect_refused_cheaply([&] { (void)conversion_from_hf(HfFolder::open(folder)); }, "n_layers");
  // Sizes written as floats too large for any integer.
  test::write_text(dir_.file("config.json"), R"({"model_type": "llama", "vocab_size": 1e300})");
  expect_refused_cheaply([&] { (void)conversion_from_hf(HfFolder::open(folder)); }, "'vocab_size'");

  // tokenizer.json: nested a million deep, and added-token ids far beyond the vocabulary.
  test::write_text(dir_.file("config.json"), R"({"model_type": "llama"})");
  test::write_text(dir_.file("tokenizer.json"), std::string(1'000'000, '[') + std::string(1'000'000, ']'));
  // The 2 MB file is read whole before its nesting is seen: that much memory is what it justifies.
  expect_refused_cheaply([&] { (void)tokenizer_from_hf(HfFolder::open(folder)); },
                         "nests arrays or objects deeper than 64 levels", kSmallHeap + (int64_t(2) << 20));
  test::write_text(dir_.file("tokenizer.json"), R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
    "added_tokens": [{"id": 4611686018427387904, "content": "x", "special": true}]})");
  expect_refused_cheaply([&] { (void)tokenizer_from_hf(HfFolder::open(folder)); }, "token id = 4611686018427387904");
  test::write_text(dir_.file("tokenizer.json"),
                   R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1000000000}, "merges": []}})");
  expect_refused_cheaply([&] { (void)tokenizer_from_hf(HfFolder::open(folder)); }, "without gaps");
}

}  // namespace
}  // namespace kiln
