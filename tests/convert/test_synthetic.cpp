// kiln convert --synthetic: shapes against the published models' parameter counts, the written file against
// its own loader, and the weights' statistics against normal(0, 0.02).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <span>

#include "convert/quantize.h"
#include "convert/synthetic.h"
#include "engine/checksum.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tokenizer/tokenizer.h"

namespace kiln {
namespace {

using testing::TempDir;

int64_t parameter_count(const ModelConfig& c) {
  int64_t n = 0;
  for (const auto& [name, dims] : expected_tensors(c)) {
    int64_t numel = 1;
    for (int64_t d : dims) numel *= d;
    n += numel;
  }
  return n;
}

TEST(Synthetic, ShapesHaveThePublishedModelsParameterCounts) {
  // The counts the models' own releases state (embeddings, every layer, norms and head).
  EXPECT_EQ(parameter_count(synthetic_config("smollm2-135m")), 134'515'008);
  EXPECT_EQ(parameter_count(synthetic_config("tinyllama-1.1b")), 1'100'048'384);
  EXPECT_EQ(parameter_count(synthetic_config("llama2-7b")), 6'738'415'616);
  EXPECT_EQ(parameter_count(synthetic_config("llama3-8b")), 8'030'261'248);
  EXPECT_EQ(parameter_count(synthetic_config("llama2-70b")), 68'976'648'192);
  // What the counts do not pin down: grouped-query heads, head size, rotary base, tying.
  const ModelConfig smol = synthetic_config("smollm2-135m"), l3 = synthetic_config("llama3-8b");
  EXPECT_EQ(smol.n_kv_heads, 3);
  EXPECT_EQ(smol.head_dim, 64);
  EXPECT_TRUE(smol.tied_embeddings);
  EXPECT_EQ(smol.rope_theta, 100000.0f);
  EXPECT_EQ(l3.n_kv_heads, 8);
  EXPECT_EQ(l3.head_dim, 128);
  EXPECT_EQ(l3.n_vocab, 128256);
  EXPECT_EQ(l3.rope_theta, 500000.0f);
  EXPECT_EQ(synthetic_config("llama2-7b").n_kv_heads, 32);
  EXPECT_EQ(synthetic_config("llama2-70b").n_kv_heads, 8);
}

TEST(Synthetic, UnknownShapeListsTheKnownOnes) {
  try {
    (void)synthetic_config("llama-9000");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama2-7b"), std::string::npos) << e.what();
  }
}

std::vector<float> values_of(const TensorView& t) {
  std::vector<float> out(size_t(t.numel()));
  const auto* data = static_cast<const uint8_t*>(t.data);
  const auto* scales = reinterpret_cast<const uint8_t*>(t.scales);
  const size_t scale_bytes = t.scales ? size_t(t.numel()) / t.group_size * 2 : 0;
  dequantize_rows(std::span(data, t.bytes), std::span(scales, scale_bytes), t.rows(), t.cols(), t.dtype, t.group_size,
                  out.data());
  return out;
}

void expect_normal_002(const TensorView& t) {
  const std::vector<float> v = values_of(t);
  double sum = 0, sum_sq = 0;
  for (float x : v) sum += x, sum_sq += double(x) * x;
  const double n = double(v.size()), mean = sum / n, sd = std::sqrt(sum_sq / n - mean * mean);
  // The mean of n normal(0, 0.02) values has a standard error of 0.02 / sqrt(n); allow 5 of them.
  EXPECT_NEAR(mean, 0.0, 5 * 0.02 / std::sqrt(n)) << t.name;
  EXPECT_NEAR(sd, 0.02, 0.02 * 0.05) << t.name;
}

class SyntheticFile : public ::testing::TestWithParam<const char*> {};

TEST_P(SyntheticFile, TinyShapeLoadsVerifiesAndHoldsRandomWeights) {
  TempDir dir;
  ConvertOptions options;
  options.weight_dtype = *dtype_from_name(GetParam());
  write_synthetic("test-tiny", dir.file("tiny.kiln"), options);

  const KilnFile file = KilnFile::open(dir.file("tiny.kiln"));
  EXPECT_TRUE(file.synthetic());
  EXPECT_EQ(file.metadata()["provenance"]["synthetic"], true);
  EXPECT_TRUE(file.verify().empty());
  const ModelConfig want = synthetic_config("test-tiny");
  EXPECT_EQ(file.config().dim, want.dim);
  EXPECT_EQ(file.config().n_layers, want.n_layers);
  EXPECT_EQ(file.config().n_kv_heads, want.n_kv_heads);
  for (const auto& [name, dims] : expected_tensors(want)) {
    const TensorView* t = file.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(std::vector<int64_t>(t->dims.begin(), t->dims.begin() + t->n_dims), dims) << name;
    if (dims.size() == 1) {
      for (float x : values_of(*t)) ASSERT_EQ(x, 1.0f) << name;  // norms
    } else {
      EXPECT_EQ(t->dtype, options.weight_dtype) << name;
      expect_normal_002(*t);
    }
  }
  // Every layer reuses one block per kind; distinct kinds differ.
  const TensorView &up0 = *file.find("blk.0.ffn_up.weight"), &up1 = *file.find("blk.1.ffn_up.weight");
  EXPECT_EQ(std::memcmp(up0.data, up1.data, up0.bytes), 0);
  const TensorView &embd = *file.find("token_embd.weight"), &head = *file.find("output.weight");
  EXPECT_NE(std::memcmp(embd.data, head.data, embd.bytes), 0);

  const TokenizerData tok = file.tokenizer_data();
  EXPECT_EQ(int64_t(tok.tokens.size()), want.n_vocab);
  EXPECT_EQ(tok.tokens[1], "<s>");
  EXPECT_FALSE(make_tokenizer(tok)->encode("hello", true).empty());
}

INSTANTIATE_TEST_SUITE_P(Types, SyntheticFile, ::testing::Values("f16", "int8"));

TEST(Synthetic, SameShapeSameBytes) {
  TempDir dir;
  write_synthetic("test-tiny", dir.file("a.kiln"), {});
  write_synthetic("test-tiny", dir.file("b.kiln"), {});
  std::ifstream a(dir.file("a.kiln"), std::ios::binary), b(dir.file("b.kiln"), std::ios::binary);
  const std::string bytes_a((std::istreambuf_iterator<char>(a)), {}), bytes_b((std::istreambuf_iterator<char>(b)), {});
  EXPECT_EQ(bytes_a, bytes_b);
}

// Rewrites the header's flags and reseals its checksum, as a newer writer would.
void set_header_flags(const std::string& path, uint64_t flags) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  FileHeader h;
  f.read(reinterpret_cast<char*>(&h), sizeof h);
  std::string meta_and_table(h.table_offset + h.table_bytes - h.metadata_offset, '\0');
  f.seekg(std::streamoff(h.metadata_offset));
  f.read(meta_and_table.data(), std::streamsize(meta_and_table.size()));
  h.flags = flags;
  h.header_checksum = 0;
  uint32_t crc = crc32c(&h, sizeof h);
  crc = crc32c(meta_and_table.data(), h.metadata_bytes, crc);
  crc = crc32c(meta_and_table.data() + (h.table_offset - h.metadata_offset), h.table_bytes, crc);
  h.header_checksum = crc;
  f.seekp(0);
  f.write(reinterpret_cast<const char*>(&h), sizeof h);
}

TEST(Synthetic, TheHeaderFlagIsWhatMarksIt) {
  TempDir dir;
  write_synthetic("test-tiny", dir.file("m.kiln"), {});
  set_header_flags(dir.file("m.kiln"), 0);
  EXPECT_FALSE(KilnFile::open(dir.file("m.kiln")).synthetic());
  set_header_flags(dir.file("m.kiln"), kKilnFlagSynthetic);
  EXPECT_TRUE(KilnFile::open(dir.file("m.kiln")).synthetic());
  set_header_flags(dir.file("m.kiln"), kKilnFlagSynthetic | 4);
  try {
    (void)KilnFile::open(dir.file("m.kiln"));
    FAIL() << "an unknown flag was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("newer kiln"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln
