#include "convert/hf_folder.h"

#include <algorithm>
#include <fstream>
#include <set>

#include "engine/error.h"
#include "engine/json_input.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMaxJsonBytes = uint64_t(64) << 20;  // config.json and the shard index

nlohmann::json read_json_file(const fs::path& path) { return read_bounded_json(path, kMaxJsonBytes); }

std::optional<fs::path> existing_file(const fs::path& path) {
  std::error_code error;
  if (fs::is_regular_file(path, error)) return path;
  return std::nullopt;
}

// An already-quantized checkpoint would be read as its packed integers, so refuse it by name.
void refuse_quantized(const fs::path& dir, const nlohmann::json& config) {
  for (const char* key : {"quantization_config", "compression_config"}) {
    const auto it = config.find(key);
    if (it == config.end() || it->is_null()) continue;
    std::string method = "an unknown method";
    if (it->is_object()) {
      const auto quant_method = it->find("quant_method");
      if (quant_method != it->end() && quant_method->is_string()) method = quant_method->get<std::string>();
    }
    fail("'{}' holds a checkpoint quantized with {} (config.json {}); kiln converts unquantized F32, F16 or BF16 "
         "weights: use the original model's folder", dir.string(), method, key);
  }
}

// Shard names come from the index file, so they must not reach outside the folder. The check is on
// the name alone: a model cache may link shards to files stored elsewhere, which is fine.
fs::path checked_shard_path(const fs::path& dir, const nlohmann::json& shard, const std::string& tensor) {
  KILN_CHECK(shard.is_string(), "the index's weight_map entry for '{}' is not a file name", tensor);
  const fs::path relative(shard.get<std::string>());
  KILN_CHECK(!relative.empty() && !relative.has_root_path(),
             "the index places '{}' in '{}', which is not a file name inside the model folder", tensor,
             relative.string());
  for (const auto& part : relative)
    KILN_CHECK(part != "..", "the index places '{}' in '{}', which is outside the model folder", tensor,
               relative.string());
  return dir / relative;
}

}  // namespace

std::string read_bounded_file(const fs::path& path, uint64_t max_bytes) {
  std::error_code error;
  const uintmax_t size = fs::file_size(path, error);
  KILN_CHECK(!error, "cannot read '{}': {}", path.string(), error.message());
  KILN_CHECK(size <= max_bytes, "'{}' is {} bytes, over the {}-byte limit for this file", path.string(), size,
             max_bytes);
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in.good(), "cannot open '{}'", path.string());
  std::string text(size_t(size), '\0');
  in.read(text.data(), std::streamsize(size));
  text.resize(size_t(in.gcount()));  // a file that shrank meanwhile gives what it still has
  return text;
}

nlohmann::json read_bounded_json(const fs::path& path, uint64_t max_bytes) {
  return parse_json_input(read_bounded_file(path, max_bytes), fmt::format("'{}'", path.string()));
}

HfFolder HfFolder::open(const std::string& dir_name) {
  HfFolder folder;
  folder.dir_ = fs::path(dir_name);
  const fs::path& dir = folder.dir_;
  std::error_code error;
  KILN_CHECK(fs::is_directory(dir, error), "'{}' is not a folder: give a Hugging Face model folder", dir_name);

  const auto config_path = existing_file(dir / "config.json");
  KILN_CHECK(config_path.has_value(), "'{}' has no config.json: give a Hugging Face model folder", dir_name);
  folder.config_ = read_json_file(*config_path);
  KILN_CHECK(folder.config_.is_object(), "'{}' does not hold a JSON object", config_path->string());
  refuse_quantized(dir, folder.config_);

  folder.tokenizer_json_ = existing_file(dir / "tokenizer.json");
  folder.tokenizer_model_ = existing_file(dir / "tokenizer.model");
  folder.tokenizer_config_ = existing_file(dir / "tokenizer_config.json");

  // Which shard each tensor must be in, when an index says so.
  std::map<std::string, fs::path> expected_shard;
  std::vector<fs::path> shard_paths;
  if (const auto single = existing_file(dir / "model.safetensors")) {
    shard_paths.push_back(*single);
  } else if (const auto index_path = existing_file(dir / "model.safetensors.index.json")) {
    const nlohmann::json index = read_json_file(*index_path);
    const auto weight_map = index.is_object() ? index.find("weight_map") : index.end();
    KILN_CHECK(index.is_object() && weight_map != index.end() && weight_map->is_object(),
               "'{}' has no weight_map object", index_path->string());
    std::set<fs::path> unique;
    for (const auto& [tensor, shard] : weight_map->items()) {
      fs::path path = checked_shard_path(dir, shard, tensor);
      unique.insert(path);
      expected_shard.emplace(tensor, std::move(path));
    }
    KILN_CHECK(!unique.empty(), "'{}' names no tensors", index_path->string());
    shard_paths.assign(unique.begin(), unique.end());
  } else if (existing_file(dir / "pytorch_model.bin") || existing_file(dir / "pytorch_model.bin.index.json")) {
    fail("'{}' has only PyTorch pickle weights (pytorch_model.bin), which kiln does not read: download the "
         "model's safetensors files or re-save it with safe_serialization=True",
         dir_name);
  } else {
    fail("'{}' has no model.safetensors or model.safetensors.index.json: give a Hugging Face model folder with "
         "safetensors weights", dir_name);
  }

  folder.shards_.reserve(shard_paths.size());  // the lookup table points into it
  for (const fs::path& path : shard_paths) {
    KILN_CHECK(existing_file(path).has_value(), "'{}' names shard '{}', which is missing", dir_name, path.string());
    folder.shards_.push_back(SafetensorsFile::open(path.string()));
  }
  for (const SafetensorsFile& shard : folder.shards_) {
    for (const SafetensorsTensor& tensor : shard.tensors()) {
      const auto [it, added] = folder.tensors_.emplace(tensor.name, HfTensorRef{&shard, &tensor});
      KILN_CHECK(added, "tensor '{}' is in both '{}' and '{}'", tensor.name, it->second.file->path(), shard.path());
    }
  }
  for (const auto& [name, shard_path] : expected_shard) {
    const auto it = folder.tensors_.find(name);
    KILN_CHECK(it != folder.tensors_.end() && fs::path(it->second.file->path()) == shard_path,
               "the index places tensor '{}' in '{}', but that shard does not hold it", name, shard_path.string());
  }
  return folder;
}

std::vector<std::string> HfFolder::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& entry : tensors_) names.push_back(entry.first);
  return names;
}

std::optional<HfTensorRef> HfFolder::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) return std::nullopt;
  return it->second;
}

HfTensorRef HfFolder::tensor(const std::string& name) const {
  const auto found = find(name);
  KILN_CHECK(found.has_value(), "model folder '{}' has no tensor '{}'", dir_.string(), name);
  return *found;
}

void HfFolder::read_f32(const std::string& name, float* out) const {
  const HfTensorRef ref = tensor(name);
  ref.file->read_f32(*ref.tensor, out);
}

}  // namespace kiln
