// What the bench needs to state bandwidth: bytes a decode step reads, and what the memory delivers.
#pragma once

#include <cstdint>
#include <string>

#include "engine/kiln_file.h"

namespace kiln {

struct ModelBytes {
  uint64_t per_token = 0;  // weights read by one decode step (embeddings: one row, unless tied)
  std::string main_dtype;  // the dtype of most weight bytes
  uint64_t n_params = 0;   // weight values, as llama-bench counts them (a tied matrix once)
};
ModelBytes model_bytes(const KilnFile& file);

// A tensor's bytes in the file: its values, and its scales when it is int8.
uint64_t tensor_bytes(const TensorView& t);

// K and V of every layer for one cached position, of element_bytes each (4: f32 cache, 2: f16).
uint64_t kv_bytes_per_position(const ModelConfig& config, uint64_t element_bytes);

// GB/s of a plain read of a buffer much larger than the caches, with n_threads (0: all cores).
double streaming_read_gbs(int n_threads);

// The process's resident set, from /proc/self/statm; 0 where unknown.
uint64_t resident_bytes();

}  // namespace kiln
