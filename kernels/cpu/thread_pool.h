// A pool of worker threads that lives for the whole run: no thread is started per token.
#pragma once

#include <cstdint>
#include <functional>

namespace kiln {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads <= 0: all cores
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const;
  // Splits [0, n_items) into contiguous chunks, runs fn(begin, end) on the pool (the caller's thread
  // works too) and returns when all are done.
  void parallel_for(int64_t n_items, const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  struct State;
  State* state_;
};

}  // namespace kiln
