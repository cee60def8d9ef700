// Decode speed of the batched CPU backend against the single-sequence one (run by hand, not by ctest):
//   bench_batch_decode MODEL.kiln [n_sequences=16] [n_decode=32] [n_threads=0]
// Each sequence prefills a 32-token prompt, then all decode together; the figure is generated tokens
// per second over the decode steps, next to one sequence decoding alone on CpuBackend.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <vector>

#include "engine/backend.h"
#include "engine/batch_backend.h"
#include "engine/error.h"
#include "engine/kiln_file.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int run(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL.kiln [n_sequences=16] [n_decode=32] [n_threads=0]\n", argv[0]);
    return 2;
  }
  const int64_t n_seqs = argc > 2 ? std::atoll(argv[2]) : 16;
  const int64_t n_decode = argc > 3 ? std::atoll(argv[3]) : 32;
  const int n_threads = argc > 4 ? std::atoi(argv[4]) : 0;
  const int64_t n_prompt = 32;
  const kiln::KilnFile file = kiln::KilnFile::open(argv[1]);
  const int64_t n_vocab = file.config().n_vocab;
  auto token_at = [&](int64_t seq, int64_t i) { return int32_t((seq * 7919 + i * 104729 + 13) % n_vocab); };

  // One sequence alone.
  kiln::BackendOptions single_options;
  single_options.n_ctx = n_prompt + n_decode;
  single_options.n_threads = n_threads;
  auto single = kiln::make_cpu_backend(file, single_options);
  std::vector<int32_t> prompt(static_cast<size_t>(n_prompt));
  for (int64_t i = 0; i < n_prompt; ++i) prompt[size_t(i)] = token_at(0, i);
  std::vector<float> logits(size_t(n_vocab * n_seqs));
  single->forward(prompt.data(), n_prompt, 0, logits.data(), false);
  Clock::time_point start = Clock::now();
  for (int64_t i = 0; i < n_decode; ++i) {
    const int32_t token = token_at(0, n_prompt + i);
    single->forward(&token, 1, n_prompt + i, logits.data(), false);
  }
  const double single_tps = double(n_decode) / seconds_since(start);

  // n_seqs sequences together.
  kiln::BatchBackendOptions options;
  options.n_ctx = n_prompt + n_decode;
  options.max_sequences = n_seqs;
  options.max_step_tokens = std::max<int64_t>(n_seqs, n_prompt);
  options.n_threads = n_threads;
  auto batch = kiln::make_cpu_batch_backend(file, options);
  std::vector<kiln::BatchToken> rows;
  std::vector<int32_t> logit_rows;
  for (int32_t s = 0; s < n_seqs; ++s) {
    if (!batch->reserve(s, n_prompt + n_decode)) throw kiln::Error("the KV pool is too small for the benchmark");
    rows.clear();
    for (int32_t i = 0; i < n_prompt; ++i) rows.push_back({token_at(s, i), s, i});
    const int32_t last = int32_t(n_prompt - 1);
    batch->forward(rows.data(), n_prompt, &last, 1, logits.data());
  }
  start = Clock::now();
  for (int64_t i = 0; i < n_decode; ++i) {
    rows.clear();
    logit_rows.clear();
    for (int32_t s = 0; s < n_seqs; ++s) {
      rows.push_back({token_at(s, n_prompt + i), s, int32_t(n_prompt + i)});
      logit_rows.push_back(s);
    }
    batch->forward(rows.data(), n_seqs, logit_rows.data(), n_seqs, logits.data());
  }
  const double batch_tps = double(n_decode * n_seqs) / seconds_since(start);
  std::printf("single: %.1f t/s; %lld sequences batched: %.1f t/s (%.2fx)\n", single_tps,
              static_cast<long long>(n_seqs), batch_tps, batch_tps / single_tps);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
