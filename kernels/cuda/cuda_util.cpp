#include "kernels/cuda/cuda_util.h"

#include <cstdlib>
#include <string_view>

#include "engine/error.h"

namespace kiln::cuda {

void fail_cuda(cudaError_t error, const char* call, const char* file, int line) {
  fail("CUDA error {} ({}) in `{}` at {}:{}", cudaGetErrorName(error), cudaGetErrorString(error), call, file, line);
}

bool device_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" error
    return false;
  }
  return count > 0;
}

bool programmatic_launch_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("KILN_CUDA_PDL");
    return value == nullptr || std::string_view(value) != "0";
  }();
  return enabled;
}

int multiprocessor_count() { return device_limits().multiprocessors; }

DeviceLimits device_limits() {
  int device = 0;
  DeviceLimits limits;
  KILN_CUDA_CHECK(cudaGetDevice(&device));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&limits.major, cudaDevAttrComputeCapabilityMajor, device));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&limits.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&limits.multiprocessors, cudaDevAttrMultiProcessorCount, device));
  return limits;
}

template <MemoryPlace kPlace>
CudaBuffer<kPlace>::CudaBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  if constexpr (kPlace == MemoryPlace::Device) KILN_CUDA_CHECK(cudaMalloc(&data_, bytes));
  else KILN_CUDA_CHECK(cudaMallocHost(&data_, bytes));
}

template <MemoryPlace kPlace>
void CudaBuffer<kPlace>::release() {
  if (data_ == nullptr) return;
  if constexpr (kPlace == MemoryPlace::Device) cudaFree(data_);
  else cudaFreeHost(data_);
  data_ = nullptr;
}

template class CudaBuffer<MemoryPlace::Device>;
template class CudaBuffer<MemoryPlace::PageLocked>;

CudaStream::CudaStream() { KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }

CudaStream::~CudaStream() {
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

void CudaStream::synchronize() const { KILN_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void CudaGraph::begin_capture(cudaStream_t stream) {
  KILN_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
}

void CudaGraph::end_capture(cudaStream_t stream) {
  KILN_CUDA_CHECK(cudaStreamEndCapture(stream, &graph_));
  KILN_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
}

void CudaGraph::abort_capture(cudaStream_t stream) {
  cudaGraph_t partial = nullptr;
  if (cudaStreamEndCapture(stream, &partial) == cudaSuccess && partial != nullptr) cudaGraphDestroy(partial);
  (void)cudaGetLastError();
}

void CudaGraph::launch(cudaStream_t stream) const { KILN_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

void CudaGraph::release() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  if (graph_ != nullptr) cudaGraphDestroy(graph_);
  exec_ = nullptr;
  graph_ = nullptr;
}

}  // namespace kiln::cuda
