// Reads GGUF files (versions 2 and 3, little-endian): every metadata value, every tensor's type,
// shape and place, and dequantizes the tensor types kiln supports to f32. Every count, length,
// offset and size is checked against the file before it is used.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "convert/quant_blocks.h"
#include "engine/mapped_file.h"

namespace kiln {

// Metadata value types as written in the file.
enum class GgufValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

std::string gguf_value_type_name(GgufValueType type);

// One metadata value. Scalars live in the field chosen by type; an array keeps its elements in the
// one vector chosen by element_type, so a large array costs at most 8 bytes per element.
struct GgufValue {
  GgufValueType type = GgufValueType::U8;
  uint64_t u64 = 0;     // U8, U16, U32, U64; Bool as 0 or 1
  int64_t i64 = 0;      // I8, I16, I32, I64
  double f64 = 0;       // F32 (widened exactly), F64
  std::string str;      // String

  GgufValueType element_type = GgufValueType::U8;  // Array only
  uint64_t n_elements = 0;                         // Array only
  std::vector<uint64_t> u64s;     // unsigned and Bool elements
  std::vector<int64_t> i64s;      // signed elements
  std::vector<double> f64s;       // F32 and F64 elements
  std::vector<std::string> strs;  // String elements
  std::vector<GgufValue> arrays;  // Array elements (nested arrays)

  bool is_array() const { return type == GgufValueType::Array; }
};

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<uint64_t> shape;  // outermost first (row-major), the reverse of GGUF's ne[]
  uint64_t numel = 0;
  uint64_t offset = 0;  // absolute, from the start of the file
  uint64_t n_bytes = 0;

  uint64_t row_length() const { return shape.back(); }  // the innermost dim
  uint64_t n_rows() const { return numel / shape.back(); }
  std::string shape_string() const;  // "[49152, 576]"
};

class GgufFile {
 public:
  // Throws kiln::Error naming the path and the problem for anything malformed or unsupported.
  [[nodiscard]] static GgufFile open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the tensor data

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* find(const std::string& key) const;

  // Typed getters: nullopt when the key is absent; kiln::Error when it holds another type.
  // get_int accepts every integer type, get_float F32 and F64.
  std::optional<std::string> get_string(const std::string& key) const;
  std::optional<int64_t> get_int(const std::string& key) const;
  std::optional<double> get_float(const std::string& key) const;
  std::optional<bool> get_bool(const std::string& key) const;
  std::optional<std::vector<std::string>> get_string_array(const std::string& key) const;
  std::optional<std::vector<float>> get_float_array(const std::string& key) const;
  std::optional<std::vector<int64_t>> get_int_array(const std::string& key) const;

  // Tensors in file order.
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(const std::string& name) const;  // nullptr when absent
  const GgufTensor& tensor(const std::string& name) const;       // throws when absent
  const uint8_t* tensor_data(const GgufTensor& tensor) const { return file_.data() + tensor.offset; }

  // Dequantizes the whole tensor. Throws naming the type when kiln cannot read it.
  void dequantize(const GgufTensor& tensor, float* out) const;  // out: [numel]
  // Dequantizes rows [row_begin, row_begin + n_rows) where a row is the innermost dim.
  void dequantize_rows(const GgufTensor& tensor, uint64_t row_begin, uint64_t n_rows,
                       float* out) const;  // out: [n_rows, row_length]

 private:
  MappedFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::map<std::string, size_t> metadata_index_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace kiln
