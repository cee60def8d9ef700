#include "convert/safetensors_reader.h"

#include <nlohmann/json.hpp>

#include <bit>
#include <cstring>
#include <limits>
#include <optional>
#include <string_view>

#include "engine/error.h"
#include "engine/half.h"
#include "engine/json_input.h"

namespace kiln {
namespace {

static_assert(std::endian::native == std::endian::little, "the safetensors reader assumes a little-endian host");

struct DtypeInfo {
  SafetensorsDtype dtype;
  std::string_view name;
  uint32_t bytes;
  bool reads_as_f32;
};

constexpr DtypeInfo kDtypes[] = {
    {SafetensorsDtype::BOOL, "BOOL", 1, true},         {SafetensorsDtype::U8, "U8", 1, true},
    {SafetensorsDtype::I8, "I8", 1, true},             {SafetensorsDtype::F8_E4M3, "F8_E4M3", 1, false},
    {SafetensorsDtype::F8_E5M2, "F8_E5M2", 1, false},  {SafetensorsDtype::U16, "U16", 2, true},
    {SafetensorsDtype::I16, "I16", 2, true},           {SafetensorsDtype::F16, "F16", 2, true},
    {SafetensorsDtype::BF16, "BF16", 2, true},         {SafetensorsDtype::U32, "U32", 4, false},
    {SafetensorsDtype::I32, "I32", 4, false},          {SafetensorsDtype::F32, "F32", 4, true},
    {SafetensorsDtype::U64, "U64", 8, false},          {SafetensorsDtype::I64, "I64", 8, false},
    {SafetensorsDtype::F64, "F64", 8, false},
};

const DtypeInfo& dtype_info(SafetensorsDtype dtype) {
  for (const auto& info : kDtypes)
    if (info.dtype == dtype) return info;
  fail("safetensors dtype id {} is not known", uint32_t(dtype));
}

std::optional<SafetensorsDtype> dtype_from_name(std::string_view name) {
  for (const auto& info : kDtypes)
    if (info.name == name) return info.dtype;
  return std::nullopt;
}

std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  constexpr uint64_t limit = uint64_t(std::numeric_limits<int64_t>::max());
  if (a != 0 && b > limit / a) return std::nullopt;
  return a * b;
}

uint64_t json_unsigned(const nlohmann::json& value, const std::string& name, const char* what) {
  KILN_CHECK(value.is_number_unsigned(), "tensor '{}' has a {} that is not a non-negative integer: {}", name, what,
             value.dump().substr(0, 40));
  return value.get<uint64_t>();
}

SafetensorsTensor parse_tensor(const std::string& name, const nlohmann::json& entry, uint64_t data_start,
                               uint64_t data_bytes) {
  KILN_CHECK(entry.is_object(), "the header entry of tensor '{}' is not a JSON object", name);
  SafetensorsTensor tensor;
  tensor.name = name;

  const auto dtype = entry.find("dtype");
  KILN_CHECK(dtype != entry.end() && dtype->is_string(), "tensor '{}' has no dtype string", name);
  const auto parsed = dtype_from_name(dtype->get_ref<const std::string&>());
  KILN_CHECK(parsed.has_value(), "tensor '{}' has unknown dtype '{}'", name, dtype->get_ref<const std::string&>());
  tensor.dtype = *parsed;

  const auto shape = entry.find("shape");
  KILN_CHECK(shape != entry.end() && shape->is_array(), "tensor '{}' has no shape array", name);
  KILN_CHECK(shape->size() <= 8, "tensor '{}' has {} dims; kiln reads at most 8", name, shape->size());
  for (const auto& extent : *shape) {
    tensor.shape.push_back(json_unsigned(extent, name, "dim"));
    const auto product = checked_mul(tensor.numel, tensor.shape.back());
    KILN_CHECK(product.has_value(), "tensor '{}' has more elements than fit in 63 bits", name);
    tensor.numel = *product;
  }
  const auto n_bytes = checked_mul(tensor.numel, safetensors_dtype_bytes(tensor.dtype));
  KILN_CHECK(n_bytes.has_value(), "tensor '{}' is larger than fits in 63 bits", name);

  const auto offsets = entry.find("data_offsets");
  KILN_CHECK(offsets != entry.end() && offsets->is_array() && offsets->size() == 2,
             "tensor '{}' has no [begin, end] data_offsets", name);
  const uint64_t begin = json_unsigned((*offsets)[0], name, "data offset");
  const uint64_t end = json_unsigned((*offsets)[1], name, "data offset");
  KILN_CHECK(begin <= end && end <= data_bytes,
             "tensor '{}' has data_offsets [{}, {}] outside the {}-byte data section (truncated?)", name, begin, end,
             data_bytes);
  KILN_CHECK(end - begin == *n_bytes,
             "tensor '{}' of dtype {} and shape {} needs {} bytes but its data_offsets span {}", name,
             safetensors_dtype_name(tensor.dtype), tensor.shape_string(), *n_bytes, end - begin);
  tensor.offset = data_start + begin;
  tensor.n_bytes = *n_bytes;
  return tensor;
}

template <typename T>
void convert_to_f32(const uint8_t* src, uint64_t n, float* out) {
  for (uint64_t i = 0; i < n; ++i) {
    T value;
    std::memcpy(&value, src + i * sizeof(T), sizeof(T));
    out[i] = float(value);
  }
}

}  // namespace

std::string safetensors_dtype_name(SafetensorsDtype dtype) { return std::string(dtype_info(dtype).name); }
uint32_t safetensors_dtype_bytes(SafetensorsDtype dtype) { return dtype_info(dtype).bytes; }
bool safetensors_dtype_reads_as_f32(SafetensorsDtype dtype) { return dtype_info(dtype).reads_as_f32; }

std::string SafetensorsTensor::shape_string() const {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile st;
  st.file_ = MappedFile::open(path);
  const uint64_t file_size = st.file_.size();
  try {
    KILN_CHECK(file_size >= 8, "the file is {} bytes, too short for a safetensors header", file_size);
    uint64_t header_bytes;
    std::memcpy(&header_bytes, st.file_.data(), 8);
    KILN_CHECK(header_bytes <= kMaxHeaderBytes, "the header length {} is over the {}-byte limit: not a "
               "safetensors file?", header_bytes, kMaxHeaderBytes);
    KILN_CHECK(header_bytes <= file_size - 8, "the header length {} runs past the end of the {}-byte file "
               "(truncated?)", header_bytes, file_size);
    const uint64_t data_start = 8 + header_bytes;
    const uint64_t data_bytes = file_size - data_start;

    const auto* header_text = reinterpret_cast<const char*>(st.file_.data() + 8);
    nlohmann::json header;
    try {
      header = parse_json_input(std::string_view(header_text, header_bytes), "it");
    } catch (const Error& error) {
      fail("the JSON header does not parse: {}", error.what());
    }
    KILN_CHECK(header.is_object(), "the JSON header is not an object");

    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      KILN_CHECK(!name.empty(), "a tensor has an empty name");
      st.index_.emplace(name, st.tensors_.size());
      st.tensors_.push_back(parse_tensor(name, entry, data_start, data_bytes));
    }
  } catch (const nlohmann::json::exception& error) {
    fail("cannot read safetensors '{}': bad JSON header: {}", path, error.what());
  } catch (const Error& error) {
    fail("cannot read safetensors '{}': {}", path, error.what());
  }
  return st;
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const SafetensorsTensor& SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsTensor* found = find(name);
  KILN_CHECK(found != nullptr, "safetensors '{}' has no tensor '{}'", path(), name);
  return *found;
}

void SafetensorsFile::read_f32(const SafetensorsTensor& tensor, float* out) const {
  const uint8_t* src = data(tensor);
  const uint64_t n = tensor.numel;
  switch (tensor.dtype) {
    case SafetensorsDtype::F32: convert_to_f32<float>(src, n, out); return;
    case SafetensorsDtype::BOOL:
    case SafetensorsDtype::U8: convert_to_f32<uint8_t>(src, n, out); return;
    case SafetensorsDtype::I8: convert_to_f32<int8_t>(src, n, out); return;
    case SafetensorsDtype::U16: convert_to_f32<uint16_t>(src, n, out); return;
    case SafetensorsDtype::I16: convert_to_f32<int16_t>(src, n, out); return;
    case SafetensorsDtype::F16:
    case SafetensorsDtype::BF16:
      for (uint64_t i = 0; i < n; ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + i * 2, 2);
        out[i] = tensor.dtype == SafetensorsDtype::F16 ? fp16_to_fp32(bits) : bf16_to_fp32(bits);
      }
      return;
    default:
      fail("tensor '{}' in '{}' has dtype {}, which does not convert to f32 exactly: kiln reads F32, F16, BF16 "
           "and 8/16-bit integer tensors", tensor.name, path(), safetensors_dtype_name(tensor.dtype));
  }
}

}  // namespace kiln
