#include "engine/rank_threads.h"

namespace kiln {

RankThreads::RankThreads(int n_ranks) : errors_(size_t(n_ranks)) {
  for (int rank = 1; rank < n_ranks; ++rank) threads_.emplace_back([this, rank] { serve(rank); });
}

RankThreads::~RankThreads() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  start_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void RankThreads::run(const std::function<void(int)>& fn) {
  {
    std::lock_guard lock(mutex_);
    job_ = &fn;
    running_ = int(threads_.size());
    ++generation_;
    for (auto& e : errors_) e = nullptr;
  }
  start_.notify_all();
  try {
    fn(0);
  } catch (...) {
    errors_[0] = std::current_exception();
  }
  std::unique_lock lock(mutex_);
  done_.wait(lock, [this] { return running_ == 0; });
  job_ = nullptr;
  for (const auto& e : errors_)
    if (e) std::rethrow_exception(e);
}

void RankThreads::serve(int rank) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int)>* job;
    {
      std::unique_lock lock(mutex_);
      start_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      job = job_;
    }
    std::exception_ptr error;
    try {
      (*job)(rank);
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard lock(mutex_);
    errors_[size_t(rank)] = error;
    if (--running_ == 0) done_.notify_one();
  }
}

}  // namespace kiln
