// GGML tensor types as GGUF files store them: the type table (block size and bytes per block for every
// known type, so any tensor's size can be checked) and the block layouts kiln can dequantize.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kiln {

// Type ids as written in a GGUF tensor info. Ids 4, 5 and 31..33, 36..38 were retired upstream.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
};

struct GgmlTypeInfo {
  GgmlType type;
  std::string_view name;
  uint32_t block_size;   // elements per block along the innermost dim
  uint32_t block_bytes;  // bytes per block
  bool dequantizable;    // kiln can turn it into f32
};

// nullptr for an id kiln does not know (its size cannot be checked, so such a file is refused).
const GgmlTypeInfo* ggml_type_info(uint32_t raw_type);
std::string ggml_type_name(GgmlType type);
// "F32, F16, Q4_0, Q4_1, Q8_0, BF16": the GGML types kiln dequantizes, for messages and --list-archs.
std::string readable_ggml_types();

inline constexpr uint32_t kQk = 32;  // elements per block of the 32-wide legacy quants

// x = d * q
struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQk];
};
static_assert(sizeof(BlockQ8_0) == 34);

// x = d * (q - 8); byte j holds element j in its low nibble and element j + 16 in its high nibble
struct BlockQ4_0 {
  uint16_t d;  // fp16 scale
  uint8_t qs[kQk / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);

// x = d * q + m; nibbles as in BlockQ4_0
struct BlockQ4_1 {
  uint16_t d;  // fp16 scale
  uint16_t m;  // fp16 minimum
  uint8_t qs[kQk / 2];
};
static_assert(sizeof(BlockQ4_1) == 20);

// Turns n elements of `type` starting at a block boundary into f32. n must be a whole number of blocks;
// the caller has checked that src holds n / block_size blocks. Throws kiln::Error naming the type when
// kiln cannot dequantize it.
void dequantize_ggml(GgmlType type, const uint8_t* src,  // [n / block_size blocks]
                     uint64_t n, float* out);            // [n]

}  // namespace kiln
