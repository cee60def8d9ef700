// Batched generation speed against single-sequence decode (run by hand, not by ctest):
//   bench_batch_decode MODEL.kiln [--device cpu|cuda] [-s SEQUENCES=16] [-p PROMPT=32] [-n NEW=32] [-t THREADS=0]
//                      [-b STEP_TOKENS=512] [-r MATMUL_ROWS] [-P PROMPT_MATMUL_ROWS=256] [-k SPLIT_KEYS=0]
//                      [--kv-f16|--kv-fp8] [--no-single] [--profile]
// Every sequence's prompt runs first, in steps of up to STEP_TOKENS rows; then all sequences decode together,
// one row each a step, logits for every row. Prints prompt and generated tokens per second of the batch
// backend (the generated figure is the decode steps' alone, after two untimed ones), next to one sequence
// decoding alone on the device's single-sequence backend, and the time of a decode step that asks no logits
// (what copying the logits to the host costs is the difference). CUDA only: -r sets the rows of every matmul
// call of decode rows (default: kiln batch's, matmul_rows_for the sequences), -P those of prompt rows, -k the
// keys of a decode row's attention split (CudaBatchOptions::attention_chunk_keys; 0: by the sequences),
// --profile times the stages of a few more decode steps (summed over layers). The rows on the GPU
// (models from `kiln convert --synthetic`):
//   bench_batch_decode smollm2-135m.kiln --device cuda -s 64 -p 64 -n 128
//   bench_batch_decode llama2-7b.kiln --device cuda -s 32 -p 64 -n 64
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/batch_backend.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "kernels/cuda/kv_dtype.h"
#ifdef KILN_HAVE_CUDA
#include "engine/cuda_backend.h"
#include "engine/cuda_batch_backend.h"
#endif

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Args {
  std::string model, device = "cpu";
  int64_t n_seqs = 16, n_prompt = 32, n_decode = 32, step_tokens = 512;
  int64_t matmul_rows = 0, prompt_matmul_rows = 256, split_keys = 0;
  int n_threads = 0;
  kiln::cuda::KvDType kv_dtype = kiln::cuda::KvDType::F32;
  bool single = true, profile = false;
};

Args parse(int argc, char** argv) {
  KILN_CHECK(argc >= 2, "usage: {} MODEL.kiln [--device cpu|cuda] [-s SEQUENCES] [-p PROMPT] [-n NEW] [-t THREADS] "
             "[-b STEP_TOKENS] [--kv-f16|--kv-fp8]", argv[0]);
  Args a;
  a.model = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--kv-f16") a.kv_dtype = kiln::cuda::KvDType::F16;
    else if (flag == "--kv-fp8") a.kv_dtype = kiln::cuda::KvDType::F8;
    else if (flag == "--no-single") a.single = false;
    else if (flag == "--profile") a.profile = true;
    if (flag == "--kv-f16" || flag == "--kv-fp8" || flag == "--no-single" || flag == "--profile") continue;
    KILN_CHECK(i + 1 < argc, "{} needs a value", flag);
    const char* value = argv[++i];
    if (flag == "--device") a.device = value;
    else if (flag == "-s") a.n_seqs = std::atoll(value);
    else if (flag == "-p") a.n_prompt = std::atoll(value);
    else if (flag == "-n") a.n_decode = std::atoll(value);
    else if (flag == "-t") a.n_threads = std::atoi(value);
    else if (flag == "-b") a.step_tokens = std::atoll(value);
    else if (flag == "-r") a.matmul_rows = std::atoll(value);
    else if (flag == "-P") a.prompt_matmul_rows = std::atoll(value);
    else if (flag == "-k") a.split_keys = std::atoll(value);
    else kiln::fail("unknown flag '{}'", flag);
  }
  KILN_CHECK(a.device == "cpu" || a.device == "cuda", "--device '{}' is not cpu or cuda", a.device);
  KILN_CHECK(a.n_seqs >= 1 && a.n_prompt >= 1 && a.n_decode >= 1 && a.step_tokens >= a.n_seqs,
             "sequences, prompt and new tokens must be positive, and -b at least the sequences");
  return a;
}

std::unique_ptr<kiln::Backend> single_backend(const Args& a, const kiln::KilnFile& file,
                                              const kiln::BackendOptions& options) {
#ifdef KILN_HAVE_CUDA
  kiln::CudaOptions cuda;
  cuda.kv_dtype = a.kv_dtype;
  if (a.device == "cuda") return kiln::make_cuda_backend(file, options, cuda);
#endif
  KILN_CHECK(a.device == "cpu", "this build has no CUDA");
  return kiln::make_cpu_backend(file, options);
}

std::unique_ptr<kiln::BatchBackend> batch_backend(const Args& a, const kiln::KilnFile& file,
                                                  const kiln::BatchBackendOptions& options,
                                                  const std::shared_ptr<kiln::StageTimer>& timer) {
#ifdef KILN_HAVE_CUDA
  kiln::CudaBatchOptions cuda;
  cuda.kv_dtype = a.kv_dtype;
  cuda.matmul_rows = a.matmul_rows > 0 ? a.matmul_rows : kiln::matmul_rows_for(a.n_seqs);
  cuda.prompt_matmul_rows = a.prompt_matmul_rows;
  cuda.attention_chunk_keys = a.split_keys;
  cuda.stage_timer = timer;
  if (a.device == "cuda") return kiln::make_cuda_batch_backend(file, options, cuda);
#endif
  KILN_CHECK(a.device == "cpu", "this build has no CUDA");
  return kiln::make_cpu_batch_backend(file, options);
}

int run(int argc, char** argv) {
  const Args a = parse(argc, argv);
  const kiln::KilnFile file = kiln::KilnFile::open(a.model);
  // Decode steps before the timed ones (a step shape's first run launches its kernels one by one, the second
  // captures its graph, and cuBLAS meets the decode rows' call shape for the first time when prompt rows
  // take calls of their own), and after them: without logits, then profiled.
  constexpr int64_t kWarm = 2, kBare = 8, kProfiled = 4;
  const int64_t n_vocab = file.config().n_vocab, n_ctx = a.n_prompt + kWarm + a.n_decode + kBare + kProfiled;
  auto token_at = [&](int64_t seq, int64_t i) { return int32_t((seq * 7919 + i * 104729 + 13) % n_vocab); };
  std::vector<float> logits(size_t(n_vocab * std::max(a.n_seqs, a.n_prompt)));

  double single_tps = 0;
  if (a.single) {  // one sequence alone
    kiln::BackendOptions options;
    options.n_ctx = n_ctx;
    options.n_threads = a.n_threads;
    auto single = single_backend(a, file, options);
    std::vector<int32_t> prompt(static_cast<size_t>(a.n_prompt));
    for (int64_t i = 0; i < a.n_prompt; ++i) prompt[size_t(i)] = token_at(0, i);
    single->forward(prompt.data(), a.n_prompt, 0, logits.data(), false);
    const Clock::time_point start = Clock::now();
    for (int64_t i = 0; i < a.n_decode; ++i) {
      const int32_t token = token_at(0, a.n_prompt + i);
      single->forward(&token, 1, a.n_prompt + i, logits.data(), false);
    }
    single_tps = double(a.n_decode) / seconds_since(start);
  }

  kiln::BatchBackendOptions options;
  options.n_ctx = n_ctx;
  options.max_sequences = a.n_seqs;
  options.max_step_tokens = a.step_tokens;
  options.kv_bytes = 0;  // the CUDA backend sizes it; the CPU one needs a size
  if (a.device == "cpu") options.kv_bytes = uint64_t(a.n_seqs * n_ctx) * 2 * uint64_t(file.config().n_layers *
                                            file.config().kv_dim()) * sizeof(float) + (uint64_t(64) << 20);
  options.n_threads = a.n_threads;
  auto timer = std::make_shared<kiln::StageTimer>();
  std::map<std::string, double> stage_us;  // summed over layers and the profiled steps
  timer->on_stage = [&](std::string_view stage, int, double us) { stage_us[std::string(stage)] += us; };
  auto batch = batch_backend(a, file, options, timer);
  for (int32_t s = 0; s < a.n_seqs; ++s)
    if (!batch->reserve(s, n_ctx)) throw kiln::Error("the KV pool is too small for the benchmark");

  float* batch_logits = batch->logits_buffer(std::max(a.n_seqs, a.step_tokens));
  // Prompts: steps of up to step_tokens rows, chunks of the prompts in order, logits for each last row.
  std::vector<kiln::BatchToken> rows;
  std::vector<int32_t> logit_rows;
  Clock::time_point start = Clock::now();
  for (int64_t s = 0, fed = 0; s < a.n_seqs;) {
    rows.clear();
    logit_rows.clear();
    while (s < a.n_seqs && int64_t(rows.size()) < a.step_tokens) {
      const int64_t n = std::min(a.n_prompt - fed, a.step_tokens - int64_t(rows.size()));
      for (int64_t i = 0; i < n; ++i, ++fed) rows.push_back({token_at(s, fed), int32_t(s), int32_t(fed), true});
      if (fed == a.n_prompt) {
        logit_rows.push_back(int32_t(rows.size() - 1));
        ++s;
        fed = 0;
      }
    }
    batch->forward(rows.data(), int64_t(rows.size()), logit_rows.data(), int64_t(logit_rows.size()), batch_logits);
  }
  const double prompt_s = seconds_since(start);

  auto decode = [&](int64_t first, int64_t n_steps, bool with_logits) {
    const Clock::time_point begin = Clock::now();
    for (int64_t i = first; i < first + n_steps; ++i) {
      rows.clear();
      logit_rows.clear();
      for (int32_t s = 0; s < a.n_seqs; ++s) {
        rows.push_back({token_at(s, a.n_prompt + i), s, int32_t(a.n_prompt + i)});
        logit_rows.push_back(s);
      }
      batch->forward(rows.data(), a.n_seqs, logit_rows.data(), with_logits ? a.n_seqs : 0, batch_logits);
    }
    return seconds_since(begin);
  };
  decode(0, kWarm, true);
  const double decode_s = decode(kWarm, a.n_decode, true);
  const double bare_s = decode(kWarm + a.n_decode, kBare, false);
  if (a.profile) {
    timer->enabled = true;
    decode(kWarm + a.n_decode + kBare, kProfiled, true);
    timer->enabled = false;
  }
  const double batch_tps = double(a.n_decode * a.n_seqs) / decode_s;
  std::printf("%s %s: %lld sequences x (%lld prompt + %lld new): prompt %.0f t/s, generated %.0f t/s (%.2f ms a "
              "step, %.2f ms without logits), end to end %.0f generated t/s; one sequence alone: %.1f t/s (batch "
              "%.1fx; 0: not run)\n",
              std::string(batch->name()).c_str(), file.config().architecture.c_str(),
              static_cast<long long>(a.n_seqs), static_cast<long long>(a.n_prompt),
              static_cast<long long>(a.n_decode), double(a.n_seqs * a.n_prompt) / prompt_s, batch_tps,
              decode_s * 1e3 / double(a.n_decode), bare_s * 1e3 / double(kBare),
              double(a.n_decode * a.n_seqs) / (prompt_s + decode_s), single_tps, batch_tps / single_tps);
  if (!stage_us.empty()) {
    double total = 0;
    for (const auto& [stage, us] : stage_us) total += us;
    std::printf("decode step by stage (each stage ends with the named tensor; layers summed), %.0f us a step:\n",
                total / kProfiled);
    for (const auto& [stage, us] : stage_us)
      std::printf("  %-12s %8.1f us %5.1f%%\n", stage.c_str(), us / kProfiled, 100 * us / total);
  }
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
