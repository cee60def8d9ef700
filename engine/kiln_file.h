// Opens a .kiln file: maps it, validates the header, metadata and tensor table against the file size,
// and hands out tensor views into the map. Weights are never copied or read at open.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/mapped_file.h"
#include "engine/model_config.h"
#include "engine/tensor.h"
#include "tokenizer/tokenizer_data.h"

namespace kiln {

class KilnFile {
 public:
  // Throws kiln::Error with a one-line message naming the problem (truncated, bad magic, bad offset, ...).
  [[nodiscard]] static KilnFile open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  uint64_t file_bytes() const { return file_.size(); }
  uint32_t version() const { return version_; }
  // Random weights at a real model's shape (kiln convert --synthetic): for speed measurements, not text.
  bool synthetic() const { return synthetic_; }
  const nlohmann::json& metadata() const { return metadata_; }
  const ModelConfig& config() const { return config_; }
  TokenizerData tokenizer_data() const;

  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(std::string_view name) const;  // nullptr when absent
  // The tensor, checked: present and of this shape (outermost first); any float or int8 dtype.
  const TensorView& get(std::string_view name, std::initializer_list<int64_t> shape) const;

  // Recomputes every tensor's checksum (reads the whole file); returns the names that do not match.
  std::vector<std::string> verify() const;

 private:
  MappedFile file_;
  uint32_t version_ = 0;
  bool synthetic_ = false;
  nlohmann::json metadata_;
  ModelConfig config_;
  std::vector<TensorView> tensors_;
};

}  // namespace kiln
