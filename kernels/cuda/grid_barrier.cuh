// A barrier across every block of a persistent kernel (all blocks resident at once: one a multiprocessor).
// The count only grows during a launch (one arrival a block a barrier), so a block waits for a target of
// its own instead of a reset between barriers; the last block to leave the kernel sets it back to zero.
// Writes before the barrier are visible after it to loads that bypass L1 (__ldcg), since L1 is not coherent
// across multiprocessors.
#pragma once

#include <cstdint>

namespace kiln::cuda {

struct GridBarrier {
  unsigned* count;  // zero when a launch starts
  unsigned* left;   // blocks that have left the kernel, zero when a launch starts
  unsigned target = 0;

  __device__ __forceinline__ void sync() {
    arrive();
    wait();
  }

  // sync() in two halves, so that a block may start work that needs no other block's writes in between.
  __device__ __forceinline__ void arrive() {
    __syncthreads();  // the block's writes before thread 0's release
    target += gridDim.x;
    if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(count) : "memory");
  }
  __device__ __forceinline__ void wait() {
    if (threadIdx.x == 0) {
      unsigned seen = 0;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(count) : "memory");
      } while (seen < target);
    }
    __syncthreads();
  }

  // Every block calls this last: the last one to leave resets the counts for the next launch (the others
  // have passed every barrier by then).
  __device__ __forceinline__ void leave() {
    if (threadIdx.x != 0) return;
    if (atomicAdd(left, 1u) == gridDim.x - 1) {
      *count = 0;
      *left = 0;
      __threadfence();
    }
  }
};

}  // namespace kiln::cuda
