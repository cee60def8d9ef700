// Builds small, valid .kiln files for the writer/loader tests.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/kiln_writer.h"
#include "engine/model_config.h"

namespace kiln::testing {

// A minimal llama-shaped config (dim 64, 2 layers) as the "model" metadata object.
inline nlohmann::json tiny_model_json() {
  ModelConfig c;
  c.architecture = "llama";
  c.n_vocab = 32;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.ffn_dim = 96;
  c.n_ctx_train = 128;
  c.rotary_dim = 16;
  return model_config_to_json(c);
}

inline nlohmann::json tiny_metadata() {
  nlohmann::json tokens = nlohmann::json::array();
  for (int i = 0; i < 32; ++i) tokens.push_back(std::string(1, char('a' + i % 26)) + std::to_string(i));
  return {{"model", tiny_model_json()},
          {"tokenizer", {{"kind", "bpe"}, {"tokens", tokens}, {"bos_id", 1}, {"eos_id", 2}}},
          {"provenance", {{"source", "test"}, {"converter", "kiln test"}}}};
}

// A fresh, empty folder under the system temp dir, removed with the object.
class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("kiln-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  std::filesystem::path path_;
};

}  // namespace kiln::testing
