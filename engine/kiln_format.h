// The .kiln file layout, shared by the converter, the loader and both backends (docs/FORMAT.md is the
// spec). Little-endian. Every struct here is written to disk byte for byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace kiln {

inline constexpr char kKilnMagic[8] = {'K', 'I', 'L', 'N', 'M', 'D', 'L', '\0'};
inline constexpr uint32_t kKilnVersion = 1;
inline constexpr uint64_t kKilnPageBytes = 4096;   // the data section starts on a page
inline constexpr uint64_t kKilnTensorAlign = 64;   // every tensor (and its scales) starts on 64 bytes
inline constexpr int kKilnMaxDims = 4;

// FileHeader::flags. Synthetic: random weights at a real model's shape, for speed measurements only.
inline constexpr uint64_t kKilnFlagSynthetic = uint64_t(1) << 0;
inline constexpr uint64_t kKilnKnownFlags = kKilnFlagSynthetic;

// Bounds the loader enforces before it allocates anything a header asks for.
inline constexpr uint64_t kKilnMaxMetadataBytes = uint64_t(256) << 20;
inline constexpr uint64_t kKilnMaxTensors = 1u << 20;
inline constexpr uint32_t kKilnMaxNameBytes = 512;

enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  BF16 = 2,
  I8 = 3,  // symmetric int8 with one fp16 scale per group of group_size values along the last dim
  U8 = 4,  // raw bytes (an embedded SentencePiece model, say)
};

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  uint32_t element_bytes;
};

inline constexpr DTypeInfo kDTypes[] = {
    {DType::F32, "f32", 4}, {DType::F16, "f16", 2}, {DType::BF16, "bf16", 2},
    {DType::I8, "int8", 1}, {DType::U8, "u8", 1},
};

inline const DTypeInfo* dtype_info(uint32_t raw) {
  for (const auto& info : kDTypes)
    if (uint32_t(info.dtype) == raw) return &info;
  return nullptr;
}
inline std::string_view dtype_name(DType dtype) { return dtype_info(uint32_t(dtype))->name; }
inline uint32_t dtype_bytes(DType dtype) { return dtype_info(uint32_t(dtype))->element_bytes; }
inline std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& info : kDTypes)
    if (info.name == name) return info.dtype;
  return std::nullopt;
}

// At offset 0 of the file.
struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;       // sizeof(FileHeader)
  uint64_t metadata_offset;    // UTF-8 JSON object (docs/FORMAT.md lists its keys)
  uint64_t metadata_bytes;
  uint64_t table_offset;       // tensor_count TensorRecords, each followed by its name
  uint64_t table_bytes;
  uint64_t tensor_count;
  uint64_t data_offset;        // page-aligned start of tensor data
  uint64_t data_bytes;
  uint64_t file_bytes;         // total size; a shorter file is truncated
  uint32_t header_checksum;    // crc32c of header (this field zero), metadata and table
  uint32_t reserved0;
  uint64_t flags;              // kKilnFlag* bits; the loader refuses bits it does not know
  uint64_t reserved[4];
};
static_assert(sizeof(FileHeader) == 128 && offsetof(FileHeader, flags) == 88);

// One entry of the tensor table; `name_bytes` bytes of name follow, then zero padding to 8 bytes.
struct TensorRecord {
  uint64_t offset;        // of the values, from data_offset
  uint64_t bytes;         // of the values
  uint64_t scale_offset;  // int8 only: fp16 scales [rows, cols / group_size], from data_offset
  uint64_t scale_bytes;
  uint64_t dims[kKilnMaxDims];  // outermost first (row-major); unused dims are 1
  uint32_t n_dims;
  uint32_t dtype;         // DType
  uint32_t group_size;    // int8 only, else 0
  uint32_t checksum;      // crc32c of the values then the scales
  uint32_t name_bytes;
  uint32_t reserved;
};
static_assert(sizeof(TensorRecord) == 88);

inline constexpr uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

}  // namespace kiln
