#include "main/bench_device.h"

#include <algorithm>
#include <fstream>

#include "engine/error.h"
#ifdef KILN_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <fmt/format.h>

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

std::string gpu_name() {
  int device = 0, driver = 0;
  cudaDeviceProp properties{};
  if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&properties, device) != cudaSuccess) return "";
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  return fmt::format("{} (driver CUDA {}.{})", properties.name, driver / 1000, driver % 1000 / 10);
}

GpuMemoryUse gpu_memory_use(const Backend& backend, const GpuMemory& before) {
  const GpuMemory now = gpu_memory();
  const CudaMemoryUse held = cuda_memory_use(backend);
  return {now.total_bytes, before.free_bytes - std::min(now.free_bytes, before.free_bytes), held.weights,
          held.kv_cache, held.workspace};
}
#else
GpuMemory gpu_memory() { return {}; }
std::string gpu_name() { return ""; }
double gpu_copy_bandwidth_gbs() { return 0; }
GpuMemoryUse gpu_memory_use(const Backend&, const GpuMemory&) { return {}; }
#endif

std::string cpu_name() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (!line.starts_with("model name")) continue;
    const size_t colon = line.find(':');
    return colon == std::string::npos ? "" : line.substr(line.find_first_not_of(" \t", colon + 1));
  }
  return "";
}

}  // namespace kiln
