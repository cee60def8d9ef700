#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/thread_pool.h"

namespace kiln {
namespace {

// Every item is visited exactly once, in contiguous chunks, for sizes around the chunk count.
TEST(ThreadPool, CoversEveryItemOnce) {
  for (int n_threads : {1, 2, 3, 5}) {
    ThreadPool pool(n_threads);
    EXPECT_EQ(pool.size(), n_threads);
    for (int64_t n : {0, 1, 2, 3, 7, 8, 9, 31, 1000}) {
      std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
      pool.parallel_for(n, [&](int64_t begin, int64_t end) {
        ASSERT_LE(0, begin);
        ASSERT_LT(begin, end);
        ASSERT_LE(end, n);
        for (int64_t i = begin; i < end; ++i) seen[size_t(i)]++;
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(seen[size_t(i)].load(), 1) << "item " << i << " of " << n;
    }
  }
}

TEST(ThreadPool, DefaultSizeIsAllCores) {
  ThreadPool pool(0);
  EXPECT_EQ(pool.size(), int(std::max(1u, std::thread::hardware_concurrency())));
}

// The caller is thread 0 and works too; worker indices are in range; each thread's ids are stable.
TEST(ThreadPool, ThreadIndicesAndCallerParticipation) {
  ThreadPool pool(3);
  std::mutex mutex;
  std::set<int> threads;
  bool caller_worked = false;
  const auto caller = std::this_thread::get_id();
  for (int repeat = 0; repeat < 200; ++repeat) {
    pool.parallel_for_thread(64, [&](int64_t, int64_t, int thread) {
      std::lock_guard lock(mutex);
      ASSERT_GE(thread, 0);
      ASSERT_LT(thread, 3);
      threads.insert(thread);
      if (std::this_thread::get_id() == caller) {
        EXPECT_EQ(thread, 0);
        caller_worked = true;
      } else {
        EXPECT_NE(thread, 0);
      }
    });
  }
  EXPECT_TRUE(caller_worked);
  EXPECT_TRUE(threads.count(0));
}

// Many short calls in a row (what decode does): results stay right and nothing deadlocks.
TEST(ThreadPool, ManyShortCalls) {
  ThreadPool pool(2);
  std::vector<int64_t> data(97);
  for (int call = 0; call < 20000; ++call) {
    pool.parallel_for(int64_t(data.size()), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) data[size_t(i)] += i;
    });
  }
  for (size_t i = 0; i < data.size(); ++i) EXPECT_EQ(data[i], int64_t(i) * 20000);
}

// A pool that sat idle long enough for its workers to sleep still wakes them.
TEST(ThreadPool, WakesSleepingWorkers) {
  ThreadPool pool(2);
  for (int round = 0; round < 3; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::atomic<int64_t> sum{0};
    pool.parallel_for(100, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) sum += i;
    });
    EXPECT_EQ(sum.load(), 4950);
  }
}

TEST(ThreadPool, RethrowsTheFirstException) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(10,
                                 [](int64_t begin, int64_t) {
                                   if (begin >= 0) throw std::runtime_error("chunk failed");
                                 }),
               std::runtime_error);
  // The pool is still usable afterwards.
  std::atomic<int64_t> count{0};
  pool.parallel_for(10, [&](int64_t begin, int64_t end) { count += end - begin; });
  EXPECT_EQ(count.load(), 10);
}

TEST(ThreadPool, NestedCallIsAnError) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(8, [&](int64_t, int64_t) { pool.parallel_for(4, [](int64_t, int64_t) {}); }),
               Error);
}

TEST(ThreadPool, ScratchIsAlignedAndKept) {
  ThreadPool pool(2);
  void* a = pool.scratch(1, 100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
  static_cast<char*>(a)[99] = 7;
  EXPECT_EQ(pool.scratch(1, 50), a);  // smaller: the same memory
  void* b = pool.scratch(1, 1 << 20);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 64, 0u);
  static_cast<char*>(b)[(1 << 20) - 1] = 1;
  EXPECT_NE(pool.scratch(0, 64), b);  // per thread
  EXPECT_THROW(pool.scratch(2, 8), Error);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool.shared_scratch(10)) % 64, 0u);
}

// The cost of one call, for the record: it must stay in the microseconds (decode makes ~300 a token).
TEST(ThreadPool, CallOverheadIsSmall) {
  ThreadPool pool(2);
  std::atomic<int64_t> sink{0};
  auto run = [&] { pool.parallel_for(64, [&](int64_t begin, int64_t end) { sink += end - begin; }); };
  for (int i = 0; i < 1000; ++i) run();
  const int n = 20000;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) run();
  const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / n;
  std::printf("parallel_for overhead: %.2f us per call\n", us);
  EXPECT_LT(us, 200.0);  // generous: the test machine is shared; typical is 1-3 us
}

}  // namespace
}  // namespace kiln
