// The NCCL communicators of a model split over GPUs 0 .. n-1 (tensor parallelism), one rank per GPU, each
// driven by its own thread of this process. NCCL is loaded on first use, as cuBLAS is (cublas_loader.h):
// only a split run pays for it, and kiln runs where it is not installed. NVLink multicast (NVLS) is left
// off unless NCCL_NVLS_ENABLE says otherwise.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

namespace kiln::cuda {

class NcclGroup {
 public:
  // Throws kiln::Error saying what to do when NCCL cannot be loaded or its communicators not made.
  explicit NcclGroup(int n_devices);
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  int size() const;
  // Sums data: [n] f32 on rank `rank`'s GPU in place over every rank, queued on stream (capturable in a
  // CUDA graph). Every rank makes the same calls in the same order.
  void all_reduce_sum(int rank, float* data, int64_t n, cudaStream_t stream) const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace kiln::cuda
