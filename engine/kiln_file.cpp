#include "engine/kiln_file.h"

#include <fmt/ranges.h>

#include <cstring>
#include <limits>
#include <unordered_set>

#include "engine/checksum.h"
#include "engine/error.h"
#include "engine/json_input.h"
#include "engine/tokenizer_metadata.h"

namespace kiln {
namespace {

// a + b <= limit, without overflow.
bool fits(uint64_t offset, uint64_t bytes, uint64_t limit) { return offset <= limit && bytes <= limit - offset; }

bool mul_overflows(uint64_t a, uint64_t b, uint64_t& out) { return __builtin_mul_overflow(a, b, &out); }

void check_header(const FileHeader& h, uint64_t file_bytes, const std::string& path) {
  KILN_CHECK(std::memcmp(h.magic, kKilnMagic, sizeof(kKilnMagic)) == 0,
             "'{}' is not a .kiln file (bad magic): convert the model with `kiln convert`", path);
  KILN_CHECK(h.version == kKilnVersion,
             "'{}' is .kiln format version {}, this kiln reads version {}: convert the model again", path, h.version,
             kKilnVersion);
  KILN_CHECK(h.header_bytes == sizeof(FileHeader), "'{}': header size {} is not {}", path, h.header_bytes,
             sizeof(FileHeader));
  KILN_CHECK((h.flags & ~kKilnKnownFlags) == 0,
             "'{}' has header flags {:#x} this kiln does not know: it was written by a newer kiln", path, h.flags);
  KILN_CHECK(h.file_bytes == file_bytes,
             "'{}' is {} bytes but its header says {}: the file is truncated or damaged, convert it again", path,
             file_bytes, h.file_bytes);
  KILN_CHECK(h.metadata_offset >= sizeof(FileHeader) && fits(h.metadata_offset, h.metadata_bytes, file_bytes),
             "'{}': metadata (offset {}, {} bytes) lies outside the file", path, h.metadata_offset, h.metadata_bytes);
  KILN_CHECK(h.metadata_bytes <= kKilnMaxMetadataBytes, "'{}': metadata of {} bytes exceeds the limit of {}", path,
             h.metadata_bytes, kKilnMaxMetadataBytes);
  KILN_CHECK(h.table_offset >= sizeof(FileHeader) && fits(h.table_offset, h.table_bytes, file_bytes),
             "'{}': tensor table (offset {}, {} bytes) lies outside the file", path, h.table_offset, h.table_bytes);
  KILN_CHECK(h.tensor_count <= kKilnMaxTensors && h.tensor_count * sizeof(TensorRecord) <= h.table_bytes,
             "'{}': {} tensors cannot fit a table of {} bytes", path, h.tensor_count, h.table_bytes);
  KILN_CHECK(h.data_offset % kKilnPageBytes == 0 && fits(h.data_offset, h.data_bytes, file_bytes),
             "'{}': tensor data (offset {}, {} bytes) is misaligned or lies outside the file", path, h.data_offset,
             h.data_bytes);
}

TensorView parse_record(const TensorRecord& r, std::string name, const FileHeader& h, const uint8_t* base,
                        const std::string& path) {
  const DTypeInfo* info = dtype_info(r.dtype);
  KILN_CHECK(info != nullptr, "'{}': tensor '{}' has unknown dtype {}", path, name, r.dtype);
  KILN_CHECK(r.n_dims >= 1 && r.n_dims <= uint32_t(kKilnMaxDims), "'{}': tensor '{}' has {} dims (1 to {} allowed)",
             path, name, r.n_dims, kKilnMaxDims);
  TensorView t;
  t.name = std::move(name);
  t.dtype = info->dtype;
  t.n_dims = int(r.n_dims);
  uint64_t numel = 1;
  for (uint32_t i = 0; i < uint32_t(kKilnMaxDims); ++i) {
    const uint64_t d = r.dims[i];
    const bool used = i < r.n_dims;
    KILN_CHECK(used ? (d >= 1 && d <= (uint64_t(1) << 40)) : d == 1, "'{}': tensor '{}' has an invalid dim {} = {}",
               path, t.name, i, d);
    KILN_CHECK(!mul_overflows(numel, d, numel), "'{}': tensor '{}' has too many elements", path, t.name);
    t.dims[i] = int64_t(d);
  }
  uint64_t expected_bytes;
  KILN_CHECK(!mul_overflows(numel, info->element_bytes, expected_bytes) && expected_bytes == r.bytes,
             "'{}': tensor '{}' of {} elements claims {} bytes", path, t.name, numel, r.bytes);
  KILN_CHECK(r.offset % kKilnTensorAlign == 0 && fits(r.offset, r.bytes, h.data_bytes),
             "'{}': tensor '{}' (offset {}, {} bytes) lies outside the data section or is misaligned", path, t.name,
             r.offset, r.bytes);
  t.data = base + h.data_offset + r.offset;
  t.bytes = r.bytes;
  if (t.dtype == DType::I8) {
    const uint64_t cols = uint64_t(t.cols());
    KILN_CHECK(r.group_size > 0 && cols % r.group_size == 0,
               "'{}': int8 tensor '{}' has group size {} that does not divide its {} columns", path, t.name,
               r.group_size, cols);
    const uint64_t scale_bytes = numel / r.group_size * 2;
    KILN_CHECK(r.scale_bytes == scale_bytes && r.scale_offset % kKilnTensorAlign == 0 &&
                   fits(r.scale_offset, r.scale_bytes, h.data_bytes),
               "'{}': int8 tensor '{}' has bad scales (offset {}, {} bytes, expected {})", path, t.name,
               r.scale_offset, r.scale_bytes, scale_bytes);
    t.scales = reinterpret_cast<const uint16_t*>(base + h.data_offset + r.scale_offset);
    t.group_size = r.group_size;
  } else {
    KILN_CHECK(r.group_size == 0 && r.scale_bytes == 0, "'{}': tensor '{}' of dtype {} has int8 scales", path,
               t.name, info->name);
  }
  return t;
}

}  // namespace

std::string TensorView::shape_string() const {
  return fmt::format("[{}]", fmt::join(dims.begin(), dims.begin() + n_dims, ", "));
}

KilnFile KilnFile::open(const std::string& path) {
  KilnFile k;
  k.file_ = MappedFile::open(path);
  const uint8_t* base = k.file_.data();
  const uint64_t size = k.file_.size();
  KILN_CHECK(size >= sizeof(FileHeader), "'{}' is {} bytes, too short for a .kiln file (truncated?)", path, size);

  FileHeader h;
  std::memcpy(&h, base, sizeof h);
  check_header(h, size, path);

  FileHeader zeroed = h;
  zeroed.header_checksum = 0;
  uint32_t crc = crc32c(&zeroed, sizeof zeroed);
  crc = crc32c(base + h.metadata_offset, h.metadata_bytes, crc);
  crc = crc32c(base + h.table_offset, h.table_bytes, crc);
  KILN_CHECK(crc == h.header_checksum,
             "'{}': header checksum mismatch (the header, metadata or tensor table is damaged): convert it again",
             path);
  k.version_ = h.version;
  k.synthetic_ = (h.flags & kKilnFlagSynthetic) != 0;

  k.metadata_ = parse_json_input(
      std::string_view(reinterpret_cast<const char*>(base + h.metadata_offset), h.metadata_bytes),
      fmt::format("the metadata of '{}'", path));
  KILN_CHECK(k.metadata_.is_object() && k.metadata_.contains("model"), "'{}': the metadata has no 'model' object",
             path);
  k.config_ = model_config_from_json(k.metadata_["model"]);

  const uint8_t* table = base + h.table_offset;
  uint64_t cursor = 0;
  std::unordered_set<std::string> names;
  k.tensors_.reserve(h.tensor_count);
  for (uint64_t i = 0; i < h.tensor_count; ++i) {
    KILN_CHECK(fits(cursor, sizeof(TensorRecord), h.table_bytes), "'{}': tensor table ends inside entry {}", path, i);
    TensorRecord r;
    std::memcpy(&r, table + cursor, sizeof r);
    cursor += sizeof r;
    KILN_CHECK(r.name_bytes > 0 && r.name_bytes <= kKilnMaxNameBytes && fits(cursor, r.name_bytes, h.table_bytes),
               "'{}': tensor table entry {} has a bad name length {}", path, i, r.name_bytes);
    std::string name(reinterpret_cast<const char*>(table + cursor), r.name_bytes);
    cursor += align_up(r.name_bytes, 8);
    KILN_CHECK(names.insert(name).second, "'{}': tensor '{}' appears twice", path, name);
    k.tensors_.push_back(parse_record(r, std::move(name), h, base, path));
  }
  return k;
}

TokenizerData KilnFile::tokenizer_data() const {
  auto it = metadata_.find("tokenizer");
  KILN_CHECK(it != metadata_.end(), "'{}' has no tokenizer: convert the model again", path());
  TokenizerData data = tokenizer_from_json(*it, config_.n_vocab);
  if (const TensorView* spm = find(kSpmModelTensor)) {
    KILN_CHECK(spm->dtype == DType::U8, "'{}': {} must be u8", path(), kSpmModelTensor);
    data.spm_model.assign(static_cast<const char*>(spm->data), spm->bytes);
  }
  return data;
}

const TensorView* KilnFile::find(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const TensorView& KilnFile::get(std::string_view name, std::initializer_list<int64_t> shape) const {
  const TensorView* t = find(name);
  KILN_CHECK(t != nullptr, "'{}' lacks tensor '{}': convert the model again", path(), name);
  bool same = int(shape.size()) == t->n_dims;
  for (size_t i = 0; same && i < shape.size(); ++i) same = t->dims[i] == shape.begin()[i];
  if (!same) {
    fail("'{}': tensor '{}' has shape {}, expected [{}]", path(), name, t->shape_string(), fmt::join(shape, ", "));
  }
  KILN_CHECK(t->dtype != DType::U8, "'{}': tensor '{}' is raw bytes, not a weight", path(), name);
  return *t;
}

std::vector<std::string> KilnFile::verify() const {
  // The table was validated at open; re-read it for the stored checksums.
  FileHeader h;
  std::memcpy(&h, file_.data(), sizeof h);
  std::vector<std::string> bad;
  uint64_t cursor = h.table_offset;
  for (const auto& t : tensors_) {
    TensorRecord r;
    std::memcpy(&r, file_.data() + cursor, sizeof r);
    cursor += sizeof r + align_up(r.name_bytes, 8);
    uint32_t crc = crc32c(t.data, t.bytes);
    if (t.scales) crc = crc32c(t.scales, r.scale_bytes, crc);
    if (crc != r.checksum) bad.push_back(t.name);
  }
  return bad;
}

}  // namespace kiln
