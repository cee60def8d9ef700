#include "convert/kiln_writer.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "engine/checksum.h"
#include "engine/error.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

struct Layout {
  std::vector<TensorRecord> records;
  std::vector<std::string> names;
  std::string metadata;
  std::vector<uint8_t> table;  // records + names, filled once checksums are known
  FileHeader header{};
};

uint64_t element_count(const TensorSpec& spec) {
  KILN_CHECK(!spec.dims.empty() && spec.dims.size() <= size_t(kKilnMaxDims), "tensor '{}' has {} dims", spec.name,
             spec.dims.size());
  uint64_t n = 1;
  for (int64_t d : spec.dims) {
    KILN_CHECK(d >= 1, "tensor '{}' has a dim of {}", spec.name, d);
    n *= uint64_t(d);
  }
  return n;
}

std::vector<uint8_t> serialize_table(const std::vector<TensorRecord>& records, const std::vector<std::string>& names) {
  std::vector<uint8_t> table;
  for (size_t i = 0; i < records.size(); ++i) {
    const auto* r = reinterpret_cast<const uint8_t*>(&records[i]);
    table.insert(table.end(), r, r + sizeof(TensorRecord));
    table.insert(table.end(), names[i].begin(), names[i].end());
    table.resize(align_up(table.size(), 8), 0);
  }
  return table;
}

// The path of the temp file being written, for the signal handler to remove; one conversion at a time.
std::atomic<const char*> g_partial_path{nullptr};

extern "C" void remove_partial_and_exit(int signal) {
  if (const char* p = g_partial_path.load()) ::unlink(p);
  ::signal(signal, SIG_DFL);
  ::raise(signal);
}

void on_stop_signals(void (*handler)(int)) {
  for (int signal : {SIGINT, SIGTERM, SIGHUP}) ::signal(signal, handler);
}

class TempFile {
 public:
  // The handlers come first: a signal the moment the file exists must find them in place.
  TempFile(std::string path, const std::string& final_path) : path_(std::move(path)) {
    g_partial_path = path_.c_str();
    on_stop_signals(remove_partial_and_exit);
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      const int error = errno;
      on_stop_signals(SIG_DFL);
      g_partial_path = nullptr;
      fail("cannot write '{}' (its temporary file '{}' cannot be created: {}): choose a folder you can write to",
           final_path, path_, std::strerror(error));
    }
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
    on_stop_signals(SIG_DFL);
    g_partial_path = nullptr;
  }
  void write_at(const void* data, uint64_t bytes, uint64_t offset) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (bytes > 0) {
      const ssize_t n = ::pwrite(fd_, p, bytes, off_t(offset));
      if (n < 0 && errno == EINTR) continue;
      KILN_CHECK(n > 0, "cannot write '{}': {} (is the disk full?)", path_, std::strerror(errno));
      p += n, bytes -= uint64_t(n), offset += uint64_t(n);
    }
  }
  void resize(uint64_t bytes) {
    KILN_CHECK(::ftruncate(fd_, off_t(bytes)) == 0, "cannot size '{}': {} (is the disk full?)", path_,
               std::strerror(errno));
  }
  void commit(const std::string& final_path) {
    KILN_CHECK(::fsync(fd_) == 0, "cannot flush '{}': {}", path_, std::strerror(errno));
    KILN_CHECK(::close(fd_) == 0, "cannot close '{}': {}", path_, std::strerror(errno));
    fd_ = -1;
    KILN_CHECK(::rename(path_.c_str(), final_path.c_str()) == 0, "cannot rename '{}' to '{}': {}", path_, final_path,
               std::strerror(errno));
    committed_ = true;
    const std::string dir = fs::path(final_path).parent_path().empty() ? "." : fs::path(final_path).parent_path().string();
    const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
      ::fsync(dir_fd);  // makes the rename durable
      ::close(dir_fd);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool committed_ = false;
};

// Removes "<dir>/.<name>.<pid>.partial" files whose process is gone (killed with -9 mid-write).
void remove_stale_partials(const std::string& path) {
  const fs::path out(path);
  const fs::path dir = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  const std::string prefix = fmt::format(".{}.", out.filename().string());
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(prefix) || !name.ends_with(".partial")) continue;
    const std::string pid_text = name.substr(prefix.size(), name.size() - prefix.size() - 8);
    char* end = nullptr;
    const long pid = std::strtol(pid_text.c_str(), &end, 10);
    if (pid_text.empty() || *end != '\0' || pid <= 0) continue;
    if (::kill(pid_t(pid), 0) != 0 && errno == ESRCH) fs::remove(entry.path(), ec);
  }
}

}  // namespace

std::string partial_path(const std::string& path, int pid) {
  const fs::path out(path);
  const fs::path name = fmt::format(".{}.{}.partial", out.filename().string(), pid);
  return (out.parent_path() / name).string();
}

void KilnWriter::add(TensorSpec spec, TensorProducer produce) {
  KILN_CHECK(!spec.name.empty() && spec.name.size() <= kKilnMaxNameBytes, "tensor name '{}' is empty or too long",
             spec.name);
  KILN_CHECK(spec.dtype != DType::I8 || (spec.group_size > 0 && spec.dims.back() % spec.group_size == 0),
             "int8 tensor '{}': group size {} must divide its {} columns", spec.name, spec.group_size,
             spec.dims.empty() ? 0 : spec.dims.back());
  entries_.push_back({std::move(spec), std::move(produce)});
}

void KilnWriter::write(const std::string& path, bool overwrite, const WriteProgress& progress) const {
  KILN_CHECK(!fs::is_directory(path), "'{}' is a folder: give a file name for the .kiln output", path);
  KILN_CHECK(overwrite || !fs::exists(path), "'{}' exists: use --force to overwrite it", path);
  remove_stale_partials(path);

  // Lay out everything first: sizes are known before any tensor is produced.
  Layout layout;
  layout.metadata = metadata_.dump();
  KILN_CHECK(layout.metadata.size() <= kKilnMaxMetadataBytes, "metadata of {} bytes is too large",
             layout.metadata.size());
  uint64_t data_cursor = 0;
  for (const auto& e : entries_) {
    TensorRecord r{};
    const uint64_t n = element_count(e.spec);
    r.n_dims = uint32_t(e.spec.dims.size());
    for (int i = 0; i < kKilnMaxDims; ++i) r.dims[i] = i < int(r.n_dims) ? uint64_t(e.spec.dims[i]) : 1;
    r.dtype = uint32_t(e.spec.dtype);
    r.offset = data_cursor;
    r.bytes = n * dtype_bytes(e.spec.dtype);
    data_cursor = align_up(r.offset + r.bytes, kKilnTensorAlign);
    if (e.spec.dtype == DType::I8) {
      r.group_size = e.spec.group_size;
      r.scale_offset = data_cursor;
      r.scale_bytes = n / e.spec.group_size * 2;
      data_cursor = align_up(r.scale_offset + r.scale_bytes, kKilnTensorAlign);
    }
    r.name_bytes = uint32_t(e.spec.name.size());
    layout.records.push_back(r);
    layout.names.push_back(e.spec.name);
  }
  FileHeader& h = layout.header;
  std::memcpy(h.magic, kKilnMagic, sizeof h.magic);
  h.version = kKilnVersion;
  h.header_bytes = sizeof(FileHeader);
  h.flags = flags_;
  h.metadata_offset = sizeof(FileHeader);
  h.metadata_bytes = layout.metadata.size();
  h.table_offset = align_up(h.metadata_offset + h.metadata_bytes, 8);
  h.table_bytes = serialize_table(layout.records, layout.names).size();
  h.tensor_count = entries_.size();
  h.data_offset = align_up(h.table_offset + h.table_bytes, kKilnPageBytes);
  h.data_bytes = data_cursor;
  h.file_bytes = h.data_offset + h.data_bytes;

  TempFile out(partial_path(path, int(::getpid())), path);
  std::vector<uint8_t> buffer;
  uint64_t written = 0;
  for (size_t i = 0; i < entries_.size(); ++i) {
    TensorRecord& r = layout.records[i];
    buffer.assign(r.bytes + r.scale_bytes, 0);
    std::span<uint8_t> values(buffer.data(), r.bytes);
    std::span<uint8_t> scales(buffer.data() + r.bytes, r.scale_bytes);
    entries_[i].produce(values, scales);
    r.checksum = crc32c(buffer.data(), buffer.size());
    out.write_at(values.data(), values.size(), h.data_offset + r.offset);
    if (!scales.empty()) out.write_at(scales.data(), scales.size(), h.data_offset + r.scale_offset);
    written += buffer.size();
    if (progress) progress(i + 1, entries_.size(), written);
  }
  out.resize(h.file_bytes);  // the last tensor may end before the padded end of the data section

  layout.table = serialize_table(layout.records, layout.names);
  h.header_checksum = 0;
  uint32_t crc = crc32c(&h, sizeof h);
  crc = crc32c(layout.metadata.data(), layout.metadata.size(), crc);
  crc = crc32c(layout.table.data(), layout.table.size(), crc);
  h.header_checksum = crc;
  out.write_at(&h, sizeof h, 0);
  out.write_at(layout.metadata.data(), layout.metadata.size(), h.metadata_offset);
  std::vector<uint8_t> gap(h.table_offset - h.metadata_offset - h.metadata_bytes, 0);
  out.write_at(gap.data(), gap.size(), h.metadata_offset + h.metadata_bytes);
  out.write_at(layout.table.data(), layout.table.size(), h.table_offset);
  out.commit(path);
}

}  // namespace kiln
