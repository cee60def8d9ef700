#include "main/bench_device.h"

#include <algorithm>

#include "engine/error.h"
#ifdef KILN_HAVE_CUDA
#include "engine/cuda_backend.h"
#include "kernels/cuda/bandwidth.h"
#endif

namespace kiln {

std::string choose_device(const std::string& requested) {
  KILN_CHECK(requested.empty() || requested == "cpu" || requested == "cuda", "--device '{}' is not cpu or cuda",
             requested);
#ifdef KILN_HAVE_CUDA
  if (requested.empty()) return cuda_available() ? "cuda" : "cpu";
  KILN_CHECK(requested == "cpu" || cuda_available(), "no CUDA GPU is available: use --device cpu");
  return requested;
#else
  KILN_CHECK(requested != "cuda", "this kiln was built without CUDA: use --device cpu, or rebuild with -DKILN_CUDA=ON");
  return "cpu";
#endif
}

std::unique_ptr<Backend> make_backend_on(const std::string& device, const KilnFile& file,
                                         const BackendOptions& options) {
#ifdef KILN_HAVE_CUDA
  if (device == "cuda") return make_cuda_backend(file, options);
#endif
  KILN_CHECK(device == "cpu", "--device '{}' is not available in this kiln", device);
  return make_cpu_backend(file, options);
}

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
