// Token embedding lookup (any weight dtype) times the model's embedding scale, plus token type 0's
// row (BERT) and a learned position embedding, added in that order. Tokens and the first position are read from device memory, so a captured decode
// step replays at any position.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/device_matrix.h"

namespace kiln::cuda {

struct EmbeddingArgs {
  DeviceMatrix token_embd;               // [n_vocab, dim] (with `projected`: any width, unused)
  DeviceMatrix pos_embd;                 // [n_positions, dim]; data nullptr: no learned positions
  DeviceMatrix type_embd;                // [n_token_types, dim]; data nullptr: no token types
  const float* projected = nullptr;      // [n_tokens, dim]: rows already looked up and projected (OPT's
                                         // narrow embedding); token_embd is then not read
  const int32_t* tokens = nullptr;       // device [n_tokens], each in [0, n_vocab) (the caller checks)
  int64_t vocab_begin = 0;               // token_embd holds the rows of tokens [vocab_begin, + rows): one rank's
                                         // part of the vocabulary; another rank's token takes a zero row
  const int32_t* first_position = nullptr;  // device scalar; token t is at first_position + t
  int64_t position_offset = 0;           // learned positions: row = position + offset
  float scale = 1.0f;                    // multiplies the token embedding
  int64_t dim = 0;                       // values per output row; 0: the token embedding's width
  float* x = nullptr;                    // [n_tokens, dim]
  int64_t n_tokens = 0;
  cudaStream_t stream = nullptr;
};

void embedding(const EmbeddingArgs& args);

}  // namespace kiln::cuda
