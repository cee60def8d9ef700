#include "kernels/cuda/bandwidth.h"

#include <algorithm>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/event_timer.h"

namespace kiln::cuda {

double copy_bandwidth_gbs(size_t bytes, int rounds) {
  KILN_CHECK(bytes > 0 && rounds >= 1, "copy_bandwidth_gbs: {} bytes, {} rounds", bytes, rounds);
  DeviceBuffer from(bytes), to(bytes);
  KILN_CUDA_CHECK(cudaMemset(from.data(), 1, bytes));
  KILN_CUDA_CHECK(cudaDeviceSynchronize());  // not timed with the copies: their stream does not wait for it
  CudaStream stream;
  EventTimer timer;
  double best = 0;
  for (int round = -1; round < rounds; ++round) {  // round -1 warms up
    timer.start(stream.get());
    KILN_CUDA_CHECK(cudaMemcpyAsync(to.data(), from.data(), bytes, cudaMemcpyDeviceToDevice, stream.get()));
    timer.mark(stream.get());
    const double seconds = double(timer.elapsed_ms().at(0)) / 1e3;
    if (round >= 0 && seconds > 0) best = std::max(best, 2.0 * double(bytes) / seconds / 1e9);
  }
  return best;
}

MemoryInfo memory_info() {
  size_t free_bytes = 0, total_bytes = 0;
  KILN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return {free_bytes, total_bytes};
}

}  // namespace kiln::cuda
