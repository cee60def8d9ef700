// Reads one .safetensors file: an 8-byte little-endian header length, a JSON header naming every
// tensor's dtype, shape and byte range, then the data section. Every range is checked at open.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/mapped_file.h"

namespace kiln {

enum class SafetensorsDtype : uint32_t {
  BOOL, U8, I8, F8_E4M3, F8_E5M2, U16, I16, F16, BF16, U32, I32, F32, U64, I64, F64,
};

std::string safetensors_dtype_name(SafetensorsDtype dtype);
uint32_t safetensors_dtype_bytes(SafetensorsDtype dtype);
// F32, F16, BF16 and the small integer and bool dtypes, which all convert to f32 exactly.
bool safetensors_dtype_reads_as_f32(SafetensorsDtype dtype);

struct SafetensorsTensor {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::F32;
  std::vector<uint64_t> shape;  // outermost first; empty for a scalar
  uint64_t numel = 1;
  uint64_t offset = 0;  // absolute, from the start of the file
  uint64_t n_bytes = 0;

  std::string shape_string() const;  // "[576, 1536]"
};

class SafetensorsFile {
 public:
  static constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;

  // Throws kiln::Error naming the path and the problem for anything malformed.
  [[nodiscard]] static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  // Sorted by name.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(const std::string& name) const;   // nullptr when absent
  const SafetensorsTensor& tensor(const std::string& name) const;  // throws when absent
  // The raw little-endian values; possibly unaligned.
  const uint8_t* data(const SafetensorsTensor& tensor) const { return file_.data() + tensor.offset; }

  // Converts the whole tensor to f32; throws naming the dtype when it cannot convert exactly.
  void read_f32(const SafetensorsTensor& tensor, float* out) const;  // out: [numel]

 private:
  MappedFile file_;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t> index_;
};

}  // namespace kiln
