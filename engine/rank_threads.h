// The threads of a tensor-parallel model, one per rank, alive as long as the model. The ranks meet in
// every collective call, so all of them must run at once: a pool that queued one rank behind another
// would never return.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln {

class RankThreads {
 public:
  explicit RankThreads(int n_ranks);  // starts n_ranks - 1 threads; rank 0 runs on the caller's
  ~RankThreads();
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  // Runs fn(rank) for every rank together and returns when all are done; rethrows the lowest rank's
  // exception. A rank that throws while the others wait in a collective call would leave them waiting:
  // the ranks' checks come before their first collective and are the same on every rank.
  void run(const std::function<void(int rank)>& fn);

 private:
  void serve(int rank);

  std::mutex mutex_;
  std::condition_variable start_, done_;
  const std::function<void(int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int running_ = 0;
  bool stopping_ = false;
  std::vector<std::exception_ptr> errors_;
  std::vector<std::thread> threads_;
};

}  // namespace kiln
