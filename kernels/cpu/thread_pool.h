// A pool of worker threads that lives for the whole run: no thread is started per token. One thread
// drives a pool at a time (the engine's); the kernels that take a pool use its scratch memory too.
// A call costs ~2 us: workers spin briefly for the next job, then sleep on a futex (std::atomic::wait).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/function_ref.h"

namespace kiln {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads <= 0: all cores
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const;
  // Splits [0, n_items) into contiguous chunks, runs fn(begin, end) on the pool (the caller's thread
  // works too) and returns when all are done. Chunks are handed out as threads become free, so a thread
  // slowed by another process does not hold the others up. An exception thrown by fn is rethrown here.
  // Not reentrant: fn must not call parallel_for on the same pool.
  void parallel_for(int64_t n_items, FunctionRef<void(int64_t begin, int64_t end)> fn);
  // The same, telling fn which thread runs it (0 is the caller, then 1 .. size() - 1) for scratch().
  void parallel_for_thread(int64_t n_items, FunctionRef<void(int64_t begin, int64_t end, int thread)> fn);

  // Memory of thread `thread` (0 .. size() - 1), 64-byte aligned, at least `bytes`: it grows and is
  // kept, so steady-state calls allocate nothing. Valid until the next call for the same thread.
  void* scratch(int thread, size_t bytes);
  // A buffer for the calling thread to fill before a parallel_for that every thread reads.
  void* shared_scratch(size_t bytes);

 private:
  struct State;
  State* state_;
};

}  // namespace kiln
