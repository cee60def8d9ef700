// The CUDA backend: the same top-to-bottom layer forward as the CPU backend (engine/cpu_backend.cpp),
// stage for stage, on one GPU. Weights are copied to the device once; activations and the KV cache are
// f32; one workspace allocation and the KV cache are sized at start-up and nothing is allocated per
// token. A decode step (one token, logits wanted) is captured into a CUDA graph on first use and
// replayed: tokens and positions reach the kernels through device memory.
#pragma once

#include <memory>

#include "engine/backend.h"

namespace kiln {

struct CudaOptions {
  int device = 0;          // CUDA device index
  bool use_graph = true;   // false: launch every decode kernel one by one (for comparison)
};

// True when a CUDA device can be used.
[[nodiscard]] bool cuda_available();

// The device memory a CUDA backend allocated, by use: what kiln bench sets against what the GPU lost.
struct CudaMemoryUse {
  uint64_t weights = 0;
  uint64_t kv_cache = 0;
  uint64_t workspace = 0;
};
// Throws kiln::Error when `backend` is not a CUDA backend.
[[nodiscard]] CudaMemoryUse cuda_memory_use(const Backend& backend);

// Throw kiln::Error when no GPU is present or the model does not fit in its free memory (the message
// gives the bytes needed and free).
[[nodiscard]] std::unique_ptr<Backend> make_cuda_backend(const KilnFile& file, const BackendOptions& options,
                                                         const CudaOptions& cuda = {});
// The weights' host views are only read during the call (they are copied to the device).
[[nodiscard]] std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& config, const Weights& weights,
                                                         const BackendOptions& options, const CudaOptions& cuda = {});

}  // namespace kiln
