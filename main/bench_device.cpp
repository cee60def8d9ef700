#include "main/bench_device.h"

#include <algorithm>

#include "engine/error.h"
#ifdef KILN_HAVE_CUDA
#include "engine/cuda_backend.h"
#include "kernels/cuda/bandwidth.h"
#endif

namespace kiln {

#ifdef KILN_HAVE_CUDA
GpuMemory gpu_memory() {
  const cuda::MemoryInfo info = cuda::memory_info();
  return {info.free_bytes, info.total_bytes};
}

double gpu_copy_bandwidth_gbs() { return cuda::copy_bandwidth_gbs(); }

GpuMemoryUse gpu_memory_use(const Backend& backend, const GpuMemory& before) {
  const GpuMemory now = gpu_memory();
  const CudaMemoryUse held = cuda_memory_use(backend);
  return {now.total_bytes, before.free_bytes - std::min(now.free_bytes, before.free_bytes), held.weights,
          held.kv_cache, held.workspace};
}
#else
GpuMemory gpu_memory() { return {}; }
double gpu_copy_bandwidth_gbs() { return 0; }
GpuMemoryUse gpu_memory_use(const Backend&, const GpuMemory&) { return {}; }
#endif

}  // namespace kiln
