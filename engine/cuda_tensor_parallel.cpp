// The CUDA backend split over GPUs: one CUDA backend per rank, on GPU `rank` with its shard of the
// weights, the ranks' partial sums added up through one NCCL group, all driven together by the
// tensor-parallel backend's threads.
#include <cuda_runtime_api.h>

#include <algorithm>

#include "engine/cuda_backend.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "engine/tensor_parallel_backend.h"
#include "kernels/cuda/cuda_util.h"
#ifdef KILN_HAVE_NCCL
#include "kernels/cuda/nccl_group.h"
#endif

namespace kiln {

std::unique_ptr<Backend> make_cuda_tensor_parallel_backend(const ModelConfig& config, const Weights& weights,
                                                           const BackendOptions& options, const CudaOptions& cuda,
                                                           int size) {
#ifndef KILN_HAVE_NCCL
  (void)config, (void)weights, (void)options, (void)cuda;
  fail("-tp {} on the GPU needs NCCL, which this kiln was built without: rebuild it where the CUDA toolkit "
       "has nccl.h, or add --device cpu",
       size);
#else
  KILN_CHECK(size >= 1 && size <= 64, "the tensor-parallel size {} is outside [1, 64]", size);
  KILN_CHECK(cuda_available(), "no CUDA GPU is available: use --device cpu");
  int count = 0;
  KILN_CUDA_CHECK(cudaGetDeviceCount(&count));
  KILN_CHECK(size <= count, "-tp {} needs a GPU per rank, and {} GPU{} present: use at most -tp {}", size, count,
             count == 1 ? " is" : "s are", count);
  // Every rank is planned first: a model that cannot be split so fails before any GPU memory is taken.
  std::vector<TensorShard> shards;
  for (int r = 0; r < size; ++r) shards.push_back(plan_shard(config, weights, r, size));
  auto group = std::make_shared<cuda::NcclGroup>(size);
  std::vector<TensorParallelBackend::Rank> ranks(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) {
    TensorParallelBackend::Rank& rank = ranks[size_t(r)];
    rank.shard = shards[size_t(r)];
    rank.communicator = group;
    BackendOptions o = options;
    o.shard = rank.shard;
    if (r > 0) {  // the debugging hooks see rank 0's shard
      o.on_tensor = nullptr;
      o.stage_timer = nullptr;
    }
    CudaOptions c = cuda;
    c.device = r;
    c.nccl = group.get();
    // The rank's host copies are read only while its backend copies them to its GPU.
    const ShardedWeights sharded = shard_weights(config, weights, rank.shard);
    rank.backend = make_cuda_backend(shard_config(config, rank.shard), sharded.weights, o, c);
  }
  KILN_CUDA_CHECK(cudaSetDevice(0));
  const int64_t chunk_rows = std::min(options.max_batch, ranks[0].backend->n_ctx());
  return std::make_unique<TensorParallelBackend>(config, std::move(ranks), chunk_rows);
#endif
}

std::unique_ptr<Backend> make_cuda_tensor_parallel_backend(const KilnFile& file, const BackendOptions& options,
                                                           const CudaOptions& cuda, int size) {
  return make_cuda_tensor_parallel_backend(file.config(), bind_weights(file), options, cuda, size);
}

}  // namespace kiln
