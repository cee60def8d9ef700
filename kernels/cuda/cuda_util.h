// What every CUDA file shares: the CUDA-call check that names the file, line and call, and the RAII
// owners of device memory, pinned host memory, streams and graphs (no raw cudaMalloc/cudaFree pairs).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

namespace kiln::cuda {

// Throws kiln::Error: "CUDA error cudaErrorX (text) in `call` at file:line".
[[noreturn]] void fail_cuda(cudaError_t error, const char* call, const char* file, int line);

// True when a CUDA device can be used (the driver loads and at least one device is present).
bool device_available();

// The number of multiprocessors of the current device (sizes split-K grids).
int multiprocessor_count();

// What the current device offers the kernels that size themselves to it.
struct DeviceLimits {
  int major = 0;            // compute capability
  int smem_optin = 0;       // shared memory a block may opt in to
  int multiprocessors = 0;
};
DeviceLimits device_limits();

// Whether kernels may use programmatic dependent launch (sm_90: a kernel scheduled while the one before it
// finishes). On unless the environment sets KILN_CUDA_PDL=0, which serialises every launch (diagnosis).
bool programmatic_launch_enabled();

// Where a CudaBuffer's memory lives: on the GPU, or in page-locked host memory (copies from it can be
// captured in a CUDA graph and run asynchronously).
enum class MemoryPlace { Device, PageLocked };

// Owns `bytes` of memory in kPlace, freed with it; movable, not copyable.
template <MemoryPlace kPlace>
class CudaBuffer {
 public:
  CudaBuffer() = default;
  explicit CudaBuffer(size_t bytes);
  ~CudaBuffer() { release(); }
  CudaBuffer(CudaBuffer&& other) noexcept : data_(std::exchange(other.data_, nullptr)), bytes_(other.bytes_) {}
  CudaBuffer& operator=(CudaBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = other.bytes_;
    }
    return *this;
  }
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  size_t bytes() const { return bytes_; }

 private:
  void release();
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

using DeviceBuffer = CudaBuffer<MemoryPlace::Device>;
using PinnedBuffer = CudaBuffer<MemoryPlace::PageLocked>;

class CudaStream {
 public:
  CudaStream();
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }
  void synchronize() const;

 private:
  cudaStream_t stream_ = nullptr;
};

// A captured sequence of launches, replayed with one call.
class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph() { release(); }
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  bool captured() const { return exec_ != nullptr; }
  // Records what `record` launches on `stream` (nothing runs), then instantiates it.
  template <typename F>
  void capture(cudaStream_t stream, F&& record) {
    release();
    begin_capture(stream);
    try {
      record();
    } catch (...) {
      abort_capture(stream);
      throw;
    }
    end_capture(stream);
  }
  void launch(cudaStream_t stream) const;
  void release();

 private:
  void begin_capture(cudaStream_t stream);
  void end_capture(cudaStream_t stream);
  void abort_capture(cudaStream_t stream);
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

// Blocks of `threads` that cover n items.
inline unsigned blocks_for(long long n, int threads) { return unsigned((n + threads - 1) / threads); }

// n rounded up to 256 bytes: the alignment of every part of a workspace.
inline size_t align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace kiln::cuda

#define KILN_CUDA_CHECK(call)                                                              \
  do {                                                                                     \
    const cudaError_t kiln_cuda_error_ = (call);                                           \
    if (kiln_cuda_error_ != cudaSuccess) ::kiln::cuda::fail_cuda(kiln_cuda_error_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: a bad launch configuration shows here, not at the next synchronisation.
#define KILN_CUDA_CHECK_LAUNCH() KILN_CUDA_CHECK(cudaGetLastError())
