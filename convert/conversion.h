// A conversion is what every source (GGUF file, Hugging Face folder) reduces to: a model config, a
// tokenizer, and kiln tensors that can each be read as f32 on demand. write_conversion() stores the
// matrices in the requested dtype and streams them into the .kiln writer.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/kiln_format.h"
#include "engine/model_config.h"
#include "tokenizer/tokenizer_data.h"

namespace kiln {

struct SourceTensor {
  std::string name;            // the kiln name (docs/FORMAT.md)
  std::vector<int64_t> dims;   // outermost first
  std::function<void(float* out)> read;  // fills [numel] f32 values
  std::string source_type;     // for the log: the source's element type (Q4_1, BF16; parts' types joined by
                               // '+'), empty for values the conversion makes
};

// "F16" or "F16+Q8_0": the distinct types of a tensor's parts, in order of first appearance.
std::string joined_types(const std::vector<std::string>& types);

struct Conversion {
  ModelConfig config;
  TokenizerData tokenizer;
  nlohmann::json provenance;   // source, source_format, ...
  std::vector<SourceTensor> tensors;
};

struct ConvertOptions {
  DType weight_dtype = DType::F16;  // for matrices; 1-D tensors (norms, biases) stay f32
  uint32_t group_size = 64;         // int8 only
  bool overwrite = false;
  bool progress = false;            // a progress bar on stderr
  bool log_tensors = false;         // a line per tensor on stderr instead (name, type -> type, shape)
};

// Checks that the conversion holds every tensor the config needs, with the right shape.
void check_conversion(const Conversion& conversion);

void write_conversion(const Conversion& conversion, const std::string& output, const ConvertOptions& options);

// The tensors a model with this config must have, name -> shape (docs/FORMAT.md).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& config);

}  // namespace kiln
