// Writes a .kiln file tensor by tensor (peak memory about one tensor) to a temp file in the output's
// folder, fsyncs and renames it: a killed conversion never leaves a partial .kiln.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/kiln_format.h"

namespace kiln {

struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> dims;  // outermost first
  uint32_t group_size = 0;    // int8 only
};

// Fills the tensor's values (and, for int8, its fp16 scales) into the spans, which are exactly sized.
using TensorProducer = std::function<void(std::span<uint8_t> values, std::span<uint8_t> scales)>;

// Called after each tensor: (tensors done, tensors total, bytes written so far).
using WriteProgress = std::function<void(size_t done, size_t total, uint64_t bytes)>;

class KilnWriter {
 public:
  explicit KilnWriter(nlohmann::json metadata) : metadata_(std::move(metadata)) {}

  void add(TensorSpec spec, TensorProducer produce);
  void set_flags(uint64_t flags) { flags_ = flags; }  // FileHeader::flags (kKilnFlag*)

  // Refuses an existing `path` unless `overwrite`. Removes temp files that an earlier, killed run left.
  void write(const std::string& path, bool overwrite, const WriteProgress& progress = {}) const;

 private:
  struct Entry {
    TensorSpec spec;
    TensorProducer produce;
  };
  nlohmann::json metadata_;
  uint64_t flags_ = 0;
  std::vector<Entry> entries_;
};

// The temp name write() uses for `path` in this process: "<dir>/.<name>.<pid>.partial".
std::string partial_path(const std::string& path, int pid);

}  // namespace kiln
