#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace kiln {
namespace {

// A worker spins this long for the next job before it sleeps: decode calls the pool every few tens of
// microseconds, so during generation it never sleeps, and an idle pool stops burning a core soon.
constexpr auto kSpin = std::chrono::microseconds(200);
// More chunks than threads lets a thread that started late, or was preempted, take less work.
constexpr int64_t kChunksPerThread = 4;

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

struct Scratch {
  std::unique_ptr<void, AlignedFree> data;
  size_t bytes = 0;

  void* get(size_t want) {
    if (want > bytes) {
      const size_t rounded = (std::max<size_t>(want, 64) + 4095) / 4096 * 4096;
      void* p = std::aligned_alloc(64, rounded);
      KILN_CHECK(p != nullptr, "out of memory: the CPU kernels asked for {} bytes of scratch", rounded);
      data.reset(p);
      bytes = rounded;
    }
    return data.get();
  }
};

using ChunkFn = FunctionRef<void(int64_t, int64_t, int)>;

}  // namespace

struct ThreadPool::State {
  int n_threads = 1;
  std::vector<std::thread> workers;
  std::vector<Scratch> scratch;  // [n_threads]
  Scratch shared;

  // The job. Fields are atomics because a worker that woke late may read them while the next job is
  // being set up; it only acts on them after claiming a chunk of the job it read (see claim_and_run).
  std::atomic<const ChunkFn*> fn{nullptr};
  std::atomic<int64_t> n_items{0};
  std::atomic<int64_t> n_chunks{0};
  // (job id << 32) | next chunk: claiming a chunk is one compare-exchange that also checks the job.
  std::atomic<uint64_t> work{0};
  std::atomic<int64_t> n_done{0};  // chunks finished in the current job

  std::atomic<uint32_t> generation{0};  // the current job id, what sleeping workers wait on
  std::atomic<int> n_sleeping{0};
  std::atomic<bool> stop{false};
  std::atomic<bool> busy{false};
  uint32_t job_id = 0;

  std::mutex error_mutex;
  std::exception_ptr error;

  void claim_and_run(uint32_t job, int thread) {
    for (;;) {
      uint64_t word = work.load(std::memory_order_acquire);
      if (uint32_t(word >> 32) != job) return;
      const uint32_t index = uint32_t(word);
      if (index >= n_chunks.load(std::memory_order_relaxed)) return;
      if (!work.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel)) continue;
      // Claimed: the caller waits for this chunk, so the job fields stay as they are until it is done.
      const int64_t chunks = n_chunks.load(std::memory_order_relaxed);
      if (index >= chunks) return;  // the bound read above was a stale one of an earlier job
      const int64_t items = n_items.load(std::memory_order_relaxed);
      const int64_t begin = items * index / chunks;
      const int64_t end = items * (index + 1) / chunks;
      try {
        (*fn.load(std::memory_order_relaxed))(begin, end, thread);
      } catch (...) {
        std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
      }
      n_done.fetch_add(1, std::memory_order_release);
    }
  }

  void worker_main(int thread) {
    uint32_t seen = 0;
    for (;;) {
      uint32_t now = generation.load(std::memory_order_acquire);
      const auto spin_end = std::chrono::steady_clock::now() + kSpin;
      for (int spins = 0; now == seen && !stop.load(std::memory_order_relaxed); ++spins) {
        cpu_relax();
        if ((spins & 63) == 63 && std::chrono::steady_clock::now() > spin_end) {
          // seq_cst on both sides: either the caller sees the sleeper or the sleeper sees the job.
          n_sleeping.fetch_add(1, std::memory_order_seq_cst);
          if (generation.load(std::memory_order_seq_cst) == seen && !stop.load(std::memory_order_seq_cst))
            generation.wait(seen, std::memory_order_seq_cst);
          n_sleeping.fetch_sub(1, std::memory_order_seq_cst);
        }
        now = generation.load(std::memory_order_acquire);
      }
      if (stop.load(std::memory_order_acquire)) return;
      seen = now;
      claim_and_run(now, thread);
    }
  }

  void stop_workers();

  void wake_all() {
    if (n_sleeping.load(std::memory_order_seq_cst) > 0) generation.notify_all();
  }
};

void ThreadPool::State::stop_workers() {
  stop.store(true, std::memory_order_seq_cst);
  generation.fetch_add(1, std::memory_order_seq_cst);
  generation.notify_all();
  for (auto& worker : workers) worker.join();
}

ThreadPool::ThreadPool(int n_threads) : state_(new State) {
  if (n_threads <= 0) n_threads = int(std::max(1u, std::thread::hardware_concurrency()));
  state_->n_threads = n_threads;
  state_->scratch.resize(size_t(n_threads));
  state_->workers.reserve(size_t(n_threads - 1));
  try {
    for (int t = 1; t < n_threads; ++t) state_->workers.emplace_back([this, t] { state_->worker_main(t); });
  } catch (...) {  // the OS refused a thread: stop the ones started, then report
    state_->stop_workers();
    delete state_;
    throw;
  }
}

ThreadPool::~ThreadPool() {
  state_->stop_workers();
  delete state_;
}

int ThreadPool::size() const { return state_->n_threads; }

void ThreadPool::parallel_for(int64_t n_items, FunctionRef<void(int64_t begin, int64_t end)> fn) {
  parallel_for_thread(n_items, [fn](int64_t begin, int64_t end, int) { fn(begin, end); });
}

void ThreadPool::parallel_for_thread(int64_t n_items, ChunkFn fn) {
  if (n_items <= 0) return;
  State& s = *state_;
  if (s.n_threads == 1 || n_items == 1) {
    fn(0, n_items, 0);
    return;
  }
  KILN_CHECK(!s.busy.exchange(true, std::memory_order_acquire),
             "ThreadPool::parallel_for was called while another one runs on the same pool (nested, or "
             "from two threads): give each calling thread its own pool");
  const int64_t n_chunks = std::min<int64_t>(n_items, int64_t(s.n_threads) * kChunksPerThread);
  const uint32_t job = ++s.job_id;
  s.fn.store(&fn, std::memory_order_relaxed);
  s.n_items.store(n_items, std::memory_order_relaxed);
  s.n_chunks.store(n_chunks, std::memory_order_relaxed);
  s.n_done.store(0, std::memory_order_relaxed);
  s.work.store(uint64_t(job) << 32, std::memory_order_release);
  s.generation.store(job, std::memory_order_seq_cst);
  s.wake_all();

  s.claim_and_run(job, 0);
  for (int spins = 0; s.n_done.load(std::memory_order_acquire) < n_chunks; ++spins) {
    if (spins < 4096) cpu_relax();
    else std::this_thread::yield();  // the worker holding the last chunk may have been preempted
  }
  std::exception_ptr error;
  {
    std::lock_guard lock(s.error_mutex);
    std::swap(error, s.error);
  }
  s.busy.store(false, std::memory_order_release);
  if (error) std::rethrow_exception(error);
}

void* ThreadPool::scratch(int thread, size_t bytes) {
  KILN_CHECK(thread >= 0 && thread < state_->n_threads, "scratch: thread {} is not in [0, {})", thread,
             state_->n_threads);
  return state_->scratch[size_t(thread)].get(bytes);
}

void* ThreadPool::shared_scratch(size_t bytes) { return state_->shared.get(bytes); }

}  // namespace kiln
