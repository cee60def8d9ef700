// What the bench states the GPU's speed against: the device's measured copy bandwidth, and its memory in
// use. Plain C++ (no CUDA headers), so main/ can call it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln::cuda {

// GB/s of device-to-device copies of `bytes` on the current device, bytes read and written both counted
// (a copy moves each byte twice), the best of `rounds` after one warm-up copy.
double copy_bandwidth_gbs(size_t bytes = size_t(1) << 30, int rounds = 5);

struct MemoryInfo {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
};
MemoryInfo memory_info();  // the current device's, from cudaMemGetInfo

}  // namespace kiln::cuda
