// The CUDA backend: the CUDA forward (engine/cuda_forward.h, stage for stage the CPU's) over one sequence
// on one GPU. Weights are copied to the device once; activations are f32, the KV cache f32, f16 or fp8;
// one workspace allocation and the KV cache are sized at start-up and nothing is allocated per token. A
// decode step (one token, logits wanted) is captured into a CUDA graph on first use and replayed: tokens
// and positions reach the kernels through device memory. With f16 or int8 weights of the Llama family,
// short-context decode steps run all layers in one persistent kernel (kernels/cuda/persistent_decode.h).
#pragma once

#include <memory>

#include "engine/backend.h"
#include "kernels/cuda/kv_dtype.h"
#include "kernels/cuda/persistent_decode.h"

namespace kiln {

namespace cuda {
class NcclGroup;
}

struct CudaOptions {
  int device = 0;          // CUDA device index
  bool use_graph = true;   // false: launch every decode kernel one by one (for comparison)
  // The KV cache's type: f16 reads half the bytes of f32 (kiln's commands default to it), fp8 a quarter.
  cuda::KvDType kv_dtype = cuda::KvDType::F32;
  // Decode steps run every layer in one persistent kernel when the model allows it (cuda::persistent_decode);
  // false: the kernels of each stage one by one (for comparison).
  bool persistent_decode = true;
  // From this position on, the kernels one by one. None by default: over long contexts the persistent
  // step splits each head's keys between its blocks (H200, 7B f16 at 8K: +6.6% over the kernels).
  int64_t persistent_max_position = int64_t(1) << 62;
  // How the persistent step brings the weights into shared memory (cuda::PersistentFeed); Auto by the shapes.
  cuda::PersistentFeed persistent_feed = cuda::PersistentFeed::Auto;
  // Tensor parallelism: the communicators of the ranks (BackendOptions::shard says which this one is).
  const cuda::NcclGroup* nccl = nullptr;
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
// Whether the backend's decode steps run as one persistent kernel (CudaOptions::persistent_decode, and a
// model that allows it); false for any other backend.
[[nodiscard]] bool cuda_persistent_decode_ready(const Backend& backend);

// Throw kiln::Error when no GPU is present or the model does not fit in its free memory (the message
// gives the bytes needed and free).
[[nodiscard]] std::unique_ptr<Backend> make_cuda_backend(const KilnFile& file, const BackendOptions& options,
                                                         const CudaOptions& cuda = {});
// The weights' host views are only read during the call (they are copied to the device).
[[nodiscard]] std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& config, const Weights& weights,
                                                         const BackendOptions& options, const CudaOptions& cuda = {});

// The model split over GPUs 0 .. size-1, one rank each (engine/tensor_shard.h), the ranks' partial sums
// added up through NCCL. size 1 runs the same path on one GPU. Throws kiln::Error when there are fewer
// GPUs, NCCL is missing or the model cannot be split so.
[[nodiscard]] std::unique_ptr<Backend> make_cuda_tensor_parallel_backend(const ModelConfig& config,
                                                                         const Weights& weights,
                                                                         const BackendOptions& options,
                                                                         const CudaOptions& cuda, int size);
[[nodiscard]] std::unique_ptr<Backend> make_cuda_tensor_parallel_backend(const KilnFile& file,
                                                                         const BackendOptions& options,
                                                                         const CudaOptions& cuda, int size);

}  // namespace kiln
