#include "convert/quant_blocks.h"

#include <cstring>

#include "engine/error.h"
#include "engine/half.h"

namespace kiln {
namespace {

constexpr GgmlTypeInfo kGgmlTypes[] = {
    {GgmlType::F32, "F32", 1, 4, true},          {GgmlType::F16, "F16", 1, 2, true},
    {GgmlType::Q4_0, "Q4_0", 32, 18, true},      {GgmlType::Q4_1, "Q4_1", 32, 20, true},
    {GgmlType::Q5_0, "Q5_0", 32, 22, false},     {GgmlType::Q5_1, "Q5_1", 32, 24, false},
    {GgmlType::Q8_0, "Q8_0", 32, 34, true},      {GgmlType::Q8_1, "Q8_1", 32, 40, false},
    {GgmlType::Q2_K, "Q2_K", 256, 84, false},    {GgmlType::Q3_K, "Q3_K", 256, 110, false},
    {GgmlType::Q4_K, "Q4_K", 256, 144, false},   {GgmlType::Q5_K, "Q5_K", 256, 176, false},
    {GgmlType::Q6_K, "Q6_K", 256, 210, false},   {GgmlType::Q8_K, "Q8_K", 256, 292, false},
    {GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66, false}, {GgmlType::IQ2_XS, "IQ2_XS", 256, 74, false},
    {GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98, false}, {GgmlType::IQ1_S, "IQ1_S", 256, 50, false},
    {GgmlType::IQ4_NL, "IQ4_NL", 32, 18, false}, {GgmlType::IQ3_S, "IQ3_S", 256, 110, false},
    {GgmlType::IQ2_S, "IQ2_S", 256, 82, false},  {GgmlType::IQ4_XS, "IQ4_XS", 256, 136, false},
    {GgmlType::I8, "I8", 1, 1, false},           {GgmlType::I16, "I16", 1, 2, false},
    {GgmlType::I32, "I32", 1, 4, false},         {GgmlType::I64, "I64", 1, 8, false},
    {GgmlType::F64, "F64", 1, 8, false},         {GgmlType::IQ1_M, "IQ1_M", 256, 56, false},
    {GgmlType::BF16, "BF16", 1, 2, true},        {GgmlType::TQ1_0, "TQ1_0", 256, 54, false},
    {GgmlType::TQ2_0, "TQ2_0", 256, 66, false},  {GgmlType::MXFP4, "MXFP4", 32, 17, false},
};

// Blocks sit at any byte offset in a mapped file, so copy each one out instead of casting.
template <typename Block>
Block load_block(const uint8_t* src, uint64_t index) {
  Block block;
  std::memcpy(&block, src + index * sizeof(Block), sizeof(Block));
  return block;
}

uint16_t load_u16(const uint8_t* src, uint64_t index) {
  uint16_t value;
  std::memcpy(&value, src + index * 2, 2);
  return value;
}

// The products below are exact in f32 (an 11-bit fp16 mantissa times at most 8 bits), so the result
// is the same whether or not the compiler fuses the multiply and add.
void dequantize_q8_0(const uint8_t* src, uint64_t n_blocks, float* out) {
  for (uint64_t b = 0; b < n_blocks; ++b) {
    const auto block = load_block<BlockQ8_0>(src, b);
    const float d = fp16_to_fp32(block.d);
    for (uint32_t j = 0; j < kQk; ++j) out[b * kQk + j] = d * float(block.qs[j]);
  }
}

void dequantize_q4_0(const uint8_t* src, uint64_t n_blocks, float* out) {
  for (uint64_t b = 0; b < n_blocks; ++b) {
    const auto block = load_block<BlockQ4_0>(src, b);
    const float d = fp16_to_fp32(block.d);
    float* y = out + b * kQk;
    for (uint32_t j = 0; j < kQk / 2; ++j) {
      y[j] = d * float(int(block.qs[j] & 0x0f) - 8);
      y[j + kQk / 2] = d * float(int(block.qs[j] >> 4) - 8);
    }
  }
}

void dequantize_q4_1(const uint8_t* src, uint64_t n_blocks, float* out) {
  for (uint64_t b = 0; b < n_blocks; ++b) {
    const auto block = load_block<BlockQ4_1>(src, b);
    const float d = fp16_to_fp32(block.d);
    const float m = fp16_to_fp32(block.m);
    float* y = out + b * kQk;
    for (uint32_t j = 0; j < kQk / 2; ++j) {
      y[j] = d * float(block.qs[j] & 0x0f) + m;
      y[j + kQk / 2] = d * float(block.qs[j] >> 4) + m;
    }
  }
}

}  // namespace

const GgmlTypeInfo* ggml_type_info(uint32_t raw_type) {
  for (const auto& info : kGgmlTypes)
    if (uint32_t(info.type) == raw_type) return &info;
  return nullptr;
}

std::string readable_ggml_types() {
  std::string names;
  for (const auto& info : kGgmlTypes)
    if (info.dequantizable) names += (names.empty() ? "" : ", ") + std::string(info.name);
  return names;
}

std::string ggml_type_name(GgmlType type) {
  const GgmlTypeInfo* info = ggml_type_info(uint32_t(type));
  return info ? std::string(info->name) : "type id " + std::to_string(uint32_t(type));
}

void dequantize_ggml(GgmlType type, const uint8_t* src, uint64_t n, float* out) {
  const GgmlTypeInfo* info = ggml_type_info(uint32_t(type));
  KILN_CHECK(info && info->dequantizable,
             "kiln cannot read GGML type {}: convert from a GGUF whose weights are {}, or from the original "
             "safetensors",
             ggml_type_name(type), readable_ggml_types());
  KILN_CHECK(n % info->block_size == 0, "{} values of type {} are not a whole number of {}-value blocks", n,
             info->name, info->block_size);
  switch (type) {
    case GgmlType::F32:
      if (n) std::memcpy(out, src, n * sizeof(float));
      return;
    case GgmlType::F16:
      for (uint64_t i = 0; i < n; ++i) out[i] = fp16_to_fp32(load_u16(src, i));
      return;
    case GgmlType::BF16:
      for (uint64_t i = 0; i < n; ++i) out[i] = bf16_to_fp32(load_u16(src, i));
      return;
    case GgmlType::Q8_0:
      return dequantize_q8_0(src, n / kQk, out);
    case GgmlType::Q4_0:
      return dequantize_q4_0(src, n / kQk, out);
    case GgmlType::Q4_1:
      return dequantize_q4_1(src, n / kQk, out);
    default:
      fail("GGML type {} is marked readable but has no reader", info->name);
  }
}

}  // namespace kiln
