#include "convert/gguf_reader.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "engine/error.h"

namespace kiln {
namespace {

static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");

constexpr uint32_t kMaxDims = 4;
// Caps far above any real model, so a hostile file cannot make the parser allocate many times its own
// size (a value or array element takes 8 to 200 bytes in memory).
constexpr uint64_t kMaxKeys = uint64_t(1) << 16;
constexpr uint64_t kMaxArrayElements = uint64_t(1) << 25;  // over all arrays of the file
constexpr uint64_t kMaxTensors = uint64_t(1) << 20;
constexpr int kMaxArrayDepth = 4;
constexpr uint64_t kMaxNestedArrays = uint64_t(1) << 16;

// The fewest file bytes one value of a type can take: bounds element counts before any allocation.
uint64_t min_value_bytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::U8:
    case GgufValueType::I8:
    case GgufValueType::Bool:
      return 1;
    case GgufValueType::U16:
    case GgufValueType::I16:
      return 2;
    case GgufValueType::U32:
    case GgufValueType::I32:
    case GgufValueType::F32:
      return 4;
    case GgufValueType::U64:
    case GgufValueType::I64:
    case GgufValueType::F64:
    case GgufValueType::String:
      return 8;
    case GgufValueType::Array:
      return 12;
  }
  return 1;
}

bool is_unsigned(GgufValueType t) {
  return t == GgufValueType::U8 || t == GgufValueType::U16 || t == GgufValueType::U32 || t == GgufValueType::U64;
}
bool is_signed(GgufValueType t) {
  return t == GgufValueType::I8 || t == GgufValueType::I16 || t == GgufValueType::I32 || t == GgufValueType::I64;
}
bool is_float(GgufValueType t) { return t == GgufValueType::F32 || t == GgufValueType::F64; }

bool is_unsigned_or_bool(GgufValueType t) { return is_unsigned(t) || t == GgufValueType::Bool; }

// Reads little-endian fields; every read is checked against the end of the file.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  template <typename T>
  T read(const char* what) {
    KILN_CHECK(remaining() >= sizeof(T), "the file ends inside the {} at byte {} (truncated?)", what, pos_);
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string read_string(const char* what) {
    const uint64_t length = read<uint64_t>(what);
    KILN_CHECK(length <= remaining(), "the {} at byte {} claims {} bytes but only {} remain", what, pos_ - 8,
               length, remaining());
    std::string text(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length;
    return text;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

GgufValueType read_value_type(Cursor& cursor, const char* what) {
  const uint32_t raw = cursor.read<uint32_t>(what);
  KILN_CHECK(raw <= uint32_t(GgufValueType::F64), "unknown metadata value type {} at byte {}", raw, cursor.pos() - 4);
  return GgufValueType(raw);
}

class MetadataParser {
 public:
  explicit MetadataParser(Cursor& cursor) : cursor_(cursor) {}

  GgufValue read_value(GgufValueType type, int depth) {
    GgufValue value;
    value.type = type;
    if (is_unsigned_or_bool(type)) {
      value.u64 = read_unsigned(type);
    } else if (is_signed(type)) {
      value.i64 = read_signed(type);
    } else if (is_float(type)) {
      value.f64 = read_floating(type);
    } else if (type == GgufValueType::String) {
      value.str = cursor_.read_string("string value");
    } else {
      read_array(value, depth);
    }
    return value;
  }

 private:
  uint64_t read_unsigned(GgufValueType type) {
    switch (type) {
      case GgufValueType::U8: return cursor_.read<uint8_t>("u8 value");
      case GgufValueType::U16: return cursor_.read<uint16_t>("u16 value");
      case GgufValueType::U32: return cursor_.read<uint32_t>("u32 value");
      case GgufValueType::U64: return cursor_.read<uint64_t>("u64 value");
      default: break;
    }
    const uint8_t raw = cursor_.read<uint8_t>("bool value");
    KILN_CHECK(raw <= 1, "bool value {} at byte {} is neither 0 nor 1", raw, cursor_.pos() - 1);
    return raw;
  }

  int64_t read_signed(GgufValueType type) {
    switch (type) {
      case GgufValueType::I8: return cursor_.read<int8_t>("i8 value");
      case GgufValueType::I16: return cursor_.read<int16_t>("i16 value");
      case GgufValueType::I32: return cursor_.read<int32_t>("i32 value");
      default: return cursor_.read<int64_t>("i64 value");
    }
  }

  double read_floating(GgufValueType type) {
    if (type == GgufValueType::F32) return cursor_.read<float>("f32 value");
    return cursor_.read<double>("f64 value");
  }

  void read_array(GgufValue& value, int depth) {
    KILN_CHECK(depth < kMaxArrayDepth, "metadata arrays nest deeper than {} levels at byte {}", kMaxArrayDepth,
               cursor_.pos());
    const GgufValueType element = read_value_type(cursor_, "array element type");
    const uint64_t count = cursor_.read<uint64_t>("array length");
    KILN_CHECK(count <= cursor_.remaining() / min_value_bytes(element),
               "an array at byte {} claims {} elements of type {}, more than the {} bytes left could hold",
               cursor_.pos() - 12, count, gguf_value_type_name(element), cursor_.remaining());
    KILN_CHECK(count <= kMaxArrayElements - n_elements_, "the metadata arrays hold more than {} elements in all",
               kMaxArrayElements);
    n_elements_ += count;
    value.element_type = element;
    value.n_elements = count;
    if (is_unsigned_or_bool(element)) {
      value.u64s.reserve(count);
      for (uint64_t i = 0; i < count; ++i) value.u64s.push_back(read_unsigned(element));
    } else if (is_signed(element)) {
      value.i64s.reserve(count);
      for (uint64_t i = 0; i < count; ++i) value.i64s.push_back(read_signed(element));
    } else if (is_float(element)) {
      value.f64s.reserve(count);
      for (uint64_t i = 0; i < count; ++i) value.f64s.push_back(read_floating(element));
    } else if (element == GgufValueType::String) {
      value.strs.reserve(count);
      for (uint64_t i = 0; i < count; ++i) value.strs.push_back(cursor_.read_string("string in an array"));
    } else {
      KILN_CHECK(count <= kMaxNestedArrays - n_nested_, "more than {} nested metadata arrays", kMaxNestedArrays);
      n_nested_ += count;
      value.arrays.reserve(count);
      for (uint64_t i = 0; i < count; ++i) value.arrays.push_back(read_value(element, depth + 1));
    }
  }

  Cursor& cursor_;
  uint64_t n_elements_ = 0;
  uint64_t n_nested_ = 0;
};

// a * b, or nullopt when it does not fit in 63 bits (sizes stay representable as int64_t).
std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  constexpr uint64_t limit = uint64_t(std::numeric_limits<int64_t>::max());
  if (a != 0 && b > limit / a) return std::nullopt;
  return a * b;
}

[[noreturn]] void wrong_type(const std::string& key, const GgufValue& value, const char* wanted) {
  if (value.is_array())
    fail("metadata key '{}' holds an array of {}, not {}", key, gguf_value_type_name(value.element_type), wanted);
  fail("metadata key '{}' holds a {}, not {}", key, gguf_value_type_name(value.type), wanted);
}

int64_t unsigned_to_int(const std::string& key, uint64_t value) {
  KILN_CHECK(value <= uint64_t(std::numeric_limits<int64_t>::max()), "metadata key '{}' holds {}, too large for "
             "a signed 64-bit integer", key, value);
  return int64_t(value);
}

}  // namespace

std::string gguf_value_type_name(GgufValueType type) {
  static constexpr const char* kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                           "bool", "string", "array", "u64", "i64", "f64"};
  const auto raw = uint32_t(type);
  return raw < std::size(kNames) ? kNames[raw] : "value type " + std::to_string(raw);
}

std::string GgufTensor::shape_string() const {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

GgufFile GgufFile::open(const std::string& path) {
  GgufFile gguf;
  gguf.file_ = MappedFile::open(path);
  const uint64_t file_size = gguf.file_.size();
  try {
    Cursor cursor(gguf.file_.data(), file_size);
    KILN_CHECK(file_size >= 4 && std::memcmp(gguf.file_.data(), "GGUF", 4) == 0,
               "the file does not start with the GGUF magic: give a .gguf model file");
    cursor.read<uint32_t>("magic");
    const uint32_t version = cursor.read<uint32_t>("version");
    KILN_CHECK(version != 1, "GGUF version 1 is too old for kiln: re-create the file with a current converter");
    KILN_CHECK(!(version > 0xffff && (version & 0xffff) == 0),
               "the file is a big-endian GGUF; kiln reads little-endian GGUF only");
    KILN_CHECK(version == 2 || version == 3, "unsupported GGUF version {}: kiln reads versions 2 and 3", version);
    gguf.version_ = version;

    const uint64_t n_tensors = cursor.read<uint64_t>("tensor count");
    const uint64_t n_keys = cursor.read<uint64_t>("metadata key count");
    KILN_CHECK(n_keys <= kMaxKeys && n_keys <= cursor.remaining() / 13,
               "the header claims {} metadata keys, more than the file could hold", n_keys);
    KILN_CHECK(n_tensors <= kMaxTensors && n_tensors <= cursor.remaining() / 32,
               "the header claims {} tensors, more than the file could hold", n_tensors);

    MetadataParser parser(cursor);
    gguf.metadata_.reserve(n_keys);
    for (uint64_t k = 0; k < n_keys; ++k) {
      std::string key = cursor.read_string("metadata key");
      KILN_CHECK(!key.empty(), "metadata entry {} has an empty key", k);
      const GgufValueType type = read_value_type(cursor, "metadata value type");
      GgufValue value = parser.read_value(type, 0);
      KILN_CHECK(gguf.metadata_index_.emplace(key, gguf.metadata_.size()).second, "metadata key '{}' appears twice",
                 key);
      gguf.metadata_.emplace_back(std::move(key), std::move(value));
    }

    if (const GgufValue* alignment = gguf.find("general.alignment")) {
      KILN_CHECK(alignment->type == GgufValueType::U32, "general.alignment is a {}, not a u32",
                 gguf_value_type_name(alignment->type));
      KILN_CHECK(std::has_single_bit(alignment->u64), "general.alignment {} is not a power of two", alignment->u64);
      gguf.alignment_ = alignment->u64;
    }

    // Tensor infos: shapes and types now, offsets checked once the data section is known.
    std::vector<uint64_t> relative_offsets;
    gguf.tensors_.reserve(n_tensors);
    relative_offsets.reserve(n_tensors);
    for (uint64_t t = 0; t < n_tensors; ++t) {
      GgufTensor tensor;
      tensor.name = cursor.read_string("tensor name");
      KILN_CHECK(!tensor.name.empty(), "tensor {} has an empty name", t);
      const uint32_t n_dims = cursor.read<uint32_t>("tensor dim count");
      KILN_CHECK(n_dims >= 1 && n_dims <= kMaxDims, "tensor '{}' has {} dims; GGUF allows 1 to {}", tensor.name,
                 n_dims, kMaxDims);
      tensor.shape.resize(n_dims);
      uint64_t numel = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        const uint64_t extent = cursor.read<uint64_t>("tensor dim");
        KILN_CHECK(extent > 0, "tensor '{}' has a zero-sized dim", tensor.name);
        const auto product = checked_mul(numel, extent);
        KILN_CHECK(product.has_value(), "tensor '{}' has more elements than fit in 63 bits", tensor.name);
        numel = *product;
        tensor.shape[n_dims - 1 - d] = extent;  // ne[0] is the innermost dim
      }
      tensor.numel = numel;
      const uint32_t raw_type = cursor.read<uint32_t>("tensor type");
      const GgmlTypeInfo* info = ggml_type_info(raw_type);
      KILN_CHECK(info != nullptr, "tensor '{}' has unknown GGML type id {}", tensor.name, raw_type);
      tensor.type = info->type;
      KILN_CHECK(tensor.row_length() % info->block_size == 0,
                 "tensor '{}' of type {} has an innermost dim {} that is not a multiple of its block size {}",
                 tensor.name, info->name, tensor.row_length(), info->block_size);
      const auto n_bytes = checked_mul(numel / info->block_size, info->block_bytes);
      KILN_CHECK(n_bytes.has_value(), "tensor '{}' is larger than fits in 63 bits", tensor.name);
      tensor.n_bytes = *n_bytes;
      relative_offsets.push_back(cursor.read<uint64_t>("tensor offset"));
      KILN_CHECK(gguf.tensor_index_.emplace(tensor.name, gguf.tensors_.size()).second, "tensor '{}' appears twice",
                 tensor.name);
      gguf.tensors_.push_back(std::move(tensor));
    }

    const uint64_t padding = (gguf.alignment_ - cursor.pos() % gguf.alignment_) % gguf.alignment_;
    gguf.data_offset_ = cursor.pos() + std::min(padding, cursor.remaining());
    KILN_CHECK(n_tensors == 0 || padding <= cursor.remaining(), "the file ends before its tensor data (truncated?)");
    const uint64_t data_bytes = file_size - gguf.data_offset_;
    for (uint64_t t = 0; t < n_tensors; ++t) {
      GgufTensor& tensor = gguf.tensors_[t];
      const uint64_t offset = relative_offsets[t];
      KILN_CHECK(offset % gguf.alignment_ == 0, "tensor '{}' starts at offset {}, not a multiple of the alignment {}",
                 tensor.name, offset, gguf.alignment_);
      KILN_CHECK(offset <= data_bytes && tensor.n_bytes <= data_bytes - offset,
                 "tensor '{}' ({} bytes at data offset {}) runs past the end of the file (truncated?)", tensor.name,
                 tensor.n_bytes, offset);
      tensor.offset = gguf.data_offset_ + offset;
    }
  } catch (const Error& error) {
    fail("cannot read GGUF '{}': {}", path, error.what());
  }
  return gguf;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  const auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

std::optional<std::string> GgufFile::get_string(const std::string& key) const {
  const GgufValue* value = find(key);
  if (!value) return std::nullopt;
  if (value->type != GgufValueType::String) wrong_type(key, *value, "a string");
  return value->str;
}

std::optional<int64_t> GgufFile::get_int(const std::string& key) const {
  const GgufValue* value = find(key);
  if (!value) return std::nullopt;
  if (is_signed(value->type)) return value->i64;
  if (!is_unsigned(value->type)) wrong_type(key, *value, "an integer");
  return unsigned_to_int(key, value->u64);
}

std::optional<double> GgufFile::get_float(const std::string& key) const {
  const GgufValue* value = find(key);
  if (!value) return std::nullopt;
  if (!is_float(value->type)) wrong_type(key, *value, "a float");
  return value->f64;
}

std::optional<bool> GgufFile::get_bool(const std::string& key) const {
  const GgufValue* value = find(key);
  if (!value) return std::nullopt;
  if (value->type != GgufValueType::Bool) wrong_type(key, *value, "a bool");
  return value->u64 != 0;
}

std::optional<std::vector<std::string>> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue* value = find(key);
  if (!value) return std::nullopt;
  if (!value->is_array() || value->element_type != GgufValueType::String)
    wrong_type(key, *value, "an array of strings");
  return value->strs;
}

std::optional<std::vector<float>> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue* value = find(key);
  if (!value) return std::nullopt;
  if (!value->is_array() || !is_float(value->element_type)) wrong_type(key, *value, "an array of floats");
  return std::vector<float>(value->f64s.begin(), value->f64s.end());
}

std::optional<std::vector<int64_t>> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue* value = find(key);
  if (!value) return std::nullopt;
  if (!value->is_array()) wrong_type(key, *value, "an array of integers");
  if (is_signed(value->element_type)) return value->i64s;
  if (!is_unsigned(value->element_type)) wrong_type(key, *value, "an array of integers");
  std::vector<int64_t> values;
  values.reserve(value->u64s.size());
  for (const uint64_t element : value->u64s) values.push_back(unsigned_to_int(key, element));
  return values;
}

const GgufTensor* GgufFile::find_tensor(const std::string& name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::tensor(const std::string& name) const {
  const GgufTensor* found = find_tensor(name);
  KILN_CHECK(found != nullptr, "GGUF '{}' has no tensor '{}'", path(), name);
  return *found;
}

void GgufFile::dequantize(const GgufTensor& tensor, float* out) const {
  dequantize_rows(tensor, 0, tensor.n_rows(), out);
}

void GgufFile::dequantize_rows(const GgufTensor& tensor, uint64_t row_begin, uint64_t n_rows, float* out) const {
  KILN_CHECK(row_begin <= tensor.n_rows() && n_rows <= tensor.n_rows() - row_begin,
             "rows [{}, {}) are outside tensor '{}' with {} rows", row_begin, row_begin + n_rows, tensor.name,
             tensor.n_rows());
  const GgmlTypeInfo* info = ggml_type_info(uint32_t(tensor.type));
  KILN_CHECK(info && info->dequantizable, "tensor '{}' has GGML type {}, which kiln cannot read: convert from a "
             "GGUF whose weights are {}, or from the original safetensors",
             tensor.name, ggml_type_name(tensor.type), readable_ggml_types());
  const uint64_t row_bytes = tensor.row_length() / info->block_size * info->block_bytes;
  dequantize_ggml(tensor.type, tensor_data(tensor) + row_begin * row_bytes, n_rows * tensor.row_length(), out);
}

}  // namespace kiln
