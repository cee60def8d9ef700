// The backend kiln bench measures, and what it states a GPU's speed and memory against. Plain C++: the
// CUDA parts sit behind functions that return zeros in a kiln built without CUDA.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/backend.h"
#include "engine/kiln_file.h"

namespace kiln {

struct GpuMemory {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
};
GpuMemory gpu_memory();            // the current device's free and total memory
std::string gpu_name();            // the current device's name, with the driver's CUDA version; "" without CUDA
std::string cpu_name();            // the first "model name" of /proc/cpuinfo; "" where there is none
double gpu_copy_bandwidth_gbs();   // device-to-device copies of 1 GiB, read + write counted, best of 5

// The GPU memory in use beyond what a CUDA backend allocated for weights, KV cache and workspace.
struct GpuMemoryUse {
  uint64_t total = 0;      // the device's memory
  uint64_t used = 0;       // free before the backend was made, less free now
  uint64_t weights = 0, kv_cache = 0, workspace = 0;
  int64_t overhead() const { return int64_t(used) - int64_t(weights + kv_cache + workspace); }
};
GpuMemoryUse gpu_memory_use(const Backend& backend, const GpuMemory& before);

}  // namespace kiln
