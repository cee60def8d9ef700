// A read-only memory map of a whole file (RAII). Opening does not read the file. A file that shrinks
// while mapped (truncated or overwritten in place) ends the process with a message naming it and
// status 1 when a page past its new end is read; one replaced by a rename stays mapped as it was.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace kiln {

class MappedFile {
 public:
  // Throws kiln::Error naming the path and the reason when the file cannot be opened or mapped.
  [[nodiscard]] static MappedFile open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace kiln
