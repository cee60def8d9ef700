// The k best logits of each row (ties to the lower id), for samplers that draw from no others: a batch step
// of 256 rows of a 32K vocabulary then copies 80 KB to the host instead of 32 MB, and the host sorts k
// logits a row instead of reading the vocabulary. Its host twin is the sampler's top-k (engine/sampler.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kiln::cuda {

struct TopLogitsArgs {
  const float* logits = nullptr;     // [n_rows, n_vocab]
  int64_t n_rows = 0;
  int64_t n_vocab = 0;               // [1, 2^24]
  int64_t k = 0;                     // [1, n_vocab]
  float* top_logits = nullptr;       // [n_rows, k] each row's k best, in no particular order
  int32_t* top_ids = nullptr;        // [n_rows, k] the token of each
  int32_t* first_invalid = nullptr;  // [n_rows] the row's first NaN or +inf logit, -1 when none
  cudaStream_t stream = nullptr;
};

void top_logits(const TopLogitsArgs& args);

}  // namespace kiln::cuda
