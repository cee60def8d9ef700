// A Hugging Face model folder: config.json, the safetensors weights (one file or shards named by
// model.safetensors.index.json) and the tokenizer files, with one tensor lookup across all shards.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "convert/safetensors_reader.h"

namespace kiln {

// The whole file, refused by its size, before any of it is read, when it is over max_bytes.
[[nodiscard]] std::string read_bounded_file(const std::filesystem::path& path, uint64_t max_bytes);
// The file's JSON: read_bounded_file, then parse_json_input (nesting bounded).
[[nodiscard]] nlohmann::json read_bounded_json(const std::filesystem::path& path, uint64_t max_bytes);

// One tensor and the shard that holds it.
struct HfTensorRef {
  const SafetensorsFile* file = nullptr;
  const SafetensorsTensor* tensor = nullptr;
};

class HfFolder {
 public:
  // Throws kiln::Error for a folder without config.json or safetensors weights, a checkpoint that is
  // already quantized (gptq, awq, fp8, ...), an index naming a shard outside the folder, or a tensor
  // the index places in a shard that lacks it.
  [[nodiscard]] static HfFolder open(const std::string& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const nlohmann::json& config() const { return config_; }

  // Paths of the tokenizer files, when the folder has them.
  const std::optional<std::filesystem::path>& tokenizer_json() const { return tokenizer_json_; }
  const std::optional<std::filesystem::path>& tokenizer_model() const { return tokenizer_model_; }
  const std::optional<std::filesystem::path>& tokenizer_config() const { return tokenizer_config_; }

  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  std::vector<std::string> tensor_names() const;  // sorted
  std::optional<HfTensorRef> find(const std::string& name) const;
  HfTensorRef tensor(const std::string& name) const;  // throws when absent
  void read_f32(const std::string& name, float* out) const;  // out: [numel]

 private:
  std::filesystem::path dir_;
  nlohmann::json config_;
  std::optional<std::filesystem::path> tokenizer_json_;
  std::optional<std::filesystem::path> tokenizer_model_;
  std::optional<std::filesystem::path> tokenizer_config_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, HfTensorRef> tensors_;
};

}  // namespace kiln
