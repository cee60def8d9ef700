// GGUF -> .kiln on the real SmolLM2 file: every tensor mapped, fused and stored within its dtype's error.
#include <gtest/gtest.h>

#include <cmath>

#include "convert/from_gguf.h"
#include "convert/quantize.h"
#include "engine/kiln_file.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/model_paths.h"

namespace kiln {
namespace {

std::vector<float> dequantized(const GgufFile& gguf, const std::string& name) {
  const GgufTensor& t = gguf.tensor(name);
  std::vector<float> out(t.numel);
  gguf.dequantize(t, out.data());
  return out;
}

std::vector<float> stored(const TensorView& t) {
  std::vector<float> out(size_t(t.numel()));
  std::span<const uint8_t> values(static_cast<const uint8_t*>(t.data), t.bytes);
  std::span<const uint8_t> scales(reinterpret_cast<const uint8_t*>(t.scales),
                                  t.scales ? size_t(t.numel() / t.group_size * 2) : 0);
  dequantize_rows(values, scales, t.rows(), t.cols(), t.dtype, t.group_size, out.data());
  return out;
}

// Max |a - b| relative to the largest |a|.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(a[i] - b[i])));
    max_abs = std::max(max_abs, double(std::fabs(a[i])));
  }
  return max_diff / max_abs;
}

class ConvertSmolLM2 : public ::testing::TestWithParam<DType> {};

TEST_P(ConvertSmolLM2, FusesAndStoresEveryTensor) {
  KILN_REQUIRE_SMOLLM2(gguf_path);
  const GgufFile gguf = GgufFile::open(gguf_path);
  const Conversion conversion = conversion_from_gguf(gguf);
  EXPECT_EQ(conversion.config.n_layers, 30);
  EXPECT_EQ(conversion.config.n_kv_heads, 3);
  EXPECT_EQ(conversion.config.rotary_style, RotaryStyle::EveryTwo);
  EXPECT_TRUE(conversion.config.tied_embeddings);
  EXPECT_EQ(conversion.tokenizer.tokens.size(), 49152u);
  EXPECT_EQ(conversion.tokenizer.merges.size(), 48900u);

  testing::TempDir dir;
  ConvertOptions options;
  options.weight_dtype = GetParam();
  options.group_size = 64;
  write_conversion(conversion, dir.file("smol.kiln"), options);
  const KilnFile file = KilnFile::open(dir.file("smol.kiln"));
  EXPECT_TRUE(file.verify().empty());
  EXPECT_EQ(file.find("output.weight"), nullptr);
  EXPECT_EQ(file.tokenizer_data().merges, conversion.tokenizer.merges);

  // The type's relative error bound: half a unit in the last place, or half an int8 step of the group max.
  const double bound = GetParam() == DType::F16 ? 0x1p-11 : GetParam() == DType::BF16 ? 0x1p-8 : 0.5 / 127 * 1.01;
  for (int layer : {0, 17, 29}) {
    const std::string src = "blk." + std::to_string(layer) + ".";
    std::vector<float> qkv = dequantized(gguf, src + "attn_q.weight");
    for (const char* part : {"attn_k.weight", "attn_v.weight"}) {
      auto more = dequantized(gguf, src + part);
      qkv.insert(qkv.end(), more.begin(), more.end());
    }
    const TensorView& fused = file.get(src + "attn_qkv.weight", {576 + 2 * 192, 576});
    EXPECT_EQ(fused.dtype, GetParam());
    EXPECT_LE(relative_error(qkv, stored(fused)), bound) << src;

    std::vector<float> gate_up = dequantized(gguf, src + "ffn_gate.weight");
    auto up = dequantized(gguf, src + "ffn_up.weight");
    gate_up.insert(gate_up.end(), up.begin(), up.end());
    EXPECT_LE(relative_error(gate_up, stored(file.get(src + "ffn_up.weight", {2 * 1536, 576}))), bound);
    EXPECT_LE(relative_error(dequantized(gguf, src + "ffn_down.weight"),
                             stored(file.get(src + "ffn_down.weight", {576, 1536}))),
              bound);
    const TensorView& norm = file.get(src + "attn_norm.weight", {576});
    EXPECT_EQ(norm.dtype, DType::F32);  // vectors are kept exact
    EXPECT_EQ(stored(norm), dequantized(gguf, src + "attn_norm.weight"));
  }
  EXPECT_LE(relative_error(dequantized(gguf, "token_embd.weight"), stored(file.get("token_embd.weight", {49152, 576}))),
            bound);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ConvertSmolLM2, ::testing::Values(DType::F16, DType::BF16, DType::I8),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

}  // namespace
}  // namespace kiln
