// kiln bench: llama-bench's flags and output. Each parameter is a comma list and the run is their
// product; prompt processing (pp), generation (tg) and both (pg) are timed over -r repetitions after a
// warm-up. Each generation row states its achieved memory bandwidth against what the device delivers (a
// streaming read on the CPU, a device-to-device copy on the GPU); on a GPU each row also states the
// memory in use beyond weights, KV cache and workspace. --profile times each stage of one decode step.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "engine/error.h"
#include "main/bench_device.h"
#include "main/build_commit.h"
#include "main/bench_memory.h"
#include "main/bench_profile.h"
#include "main/cli.h"
#include "main/commands.h"
#include "main/model_options.h"

namespace kiln {
namespace {

constexpr int kProfileSteps = 5;

struct Test {
  int64_t n_prompt = 0, n_gen = 0, n_depth = 0;
  std::string name() const {
    std::string s = n_prompt && n_gen ? fmt::format("pp{}+tg{}", n_prompt, n_gen)
                    : n_prompt        ? fmt::format("pp{}", n_prompt)
                                      : fmt::format("tg{}", n_gen);
    return n_depth ? fmt::format("{} @ d{}", s, n_depth) : s;
  }
  int64_t positions() const { return n_depth + n_prompt + n_gen; }
};

std::vector<int64_t> int_list(const cxxopts::ParseResult& args, const char* key) {
  std::vector<int64_t> out;
  for (const auto& item : split_list(args[key].as<std::vector<std::string>>())) {
    char* end = nullptr;
    const long long value = std::strtoll(item.c_str(), &end, 10);
    KILN_CHECK(!item.empty() && *end == '\0' && value >= 0, "-{} '{}' is not a count (comma lists are allowed)", key, item);
    out.push_back(value);
  }
  return out;
}

// One timed run: its seconds, the time to its first token's logits (the prompt's, or the first decode
// step's), and each decode step's seconds.
struct RunTime {
  double seconds = 0, first_token = 0;
  std::vector<double> steps;
};

// Runs tests on random tokens. The cached depth is filled once per depth (untimed); each run then rewinds
// to it, so a deep test does not pay its fill again at every repetition.
class Runner {
 public:
  explicit Runner(Backend& backend)
      : backend_(backend), token_(0, int32_t(backend.config().n_vocab - 1)) {}

  RunTime run_once(const Test& test) {
    using Clock = std::chrono::steady_clock;
    const auto since = [](Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); };
    fill_depth(test.n_depth);
    std::vector<int32_t> prompt = random_tokens(test.n_prompt);
    RunTime time;
    const auto start = Clock::now();
    int64_t position = test.n_depth;
    if (test.n_prompt) {
      backend_.forward_last(prompt.data(), test.n_prompt, position);
      position += test.n_prompt;
      time.first_token = since(start);
    }
    for (int64_t i = 0; i < test.n_gen; ++i, ++position) {
      const auto step = Clock::now();
      decode_step(position);
      time.steps.push_back(since(step));
    }
    time.seconds = since(start);
    if (!test.n_prompt) time.first_token = time.steps.front();
    return time;
  }

  // One token at `position`, after the cache holds the depth the last test filled.
  void decode_step(int64_t position) {
    const int32_t next = token_(rng_);
    backend_.forward_last(&next, 1, position);
  }

 private:
  void fill_depth(int64_t depth) {
    if (depth == filled_depth_ && backend_.n_past() >= depth) return;
    backend_.reset();
    if (depth > 0) backend_.forward(random_tokens(depth).data(), depth, 0, nullptr, false);
    filled_depth_ = depth;
  }
  std::vector<int32_t> random_tokens(int64_t n) {
    std::vector<int32_t> tokens(static_cast<size_t>(n));
    for (auto& t : tokens) t = token_(rng_);
    return tokens;
  }

  Backend& backend_;
  std::mt19937 rng_{1234};
  std::uniform_int_distribution<int32_t> token_;
  int64_t filled_depth_ = -1;
};

double mean_of(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / double(v.size()); }

double stddev_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double mean = mean_of(v);
  double sum = 0;
  for (double x : v) sum += (x - mean) * (x - mean);
  return std::sqrt(sum / double(v.size() - 1));
}

std::string gib(double bytes) { return fmt::format("{:.2f} GiB", bytes / double(uint64_t(1) << 30)); }

}  // namespace

int cmd_bench(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Measure prompt processing and generation speed, llama-bench style. The "
                                     "context is what the longest test needs, unless -c asks for more.");
  add_model_options(options);
  options.add_options()("p,n-prompt", "prompt lengths", cxxopts::value<std::vector<std::string>>()->default_value("512"))(
      "n,n-gen", "generation lengths", cxxopts::value<std::vector<std::string>>()->default_value("128"))(
      "pg", "prompt,generation pairs, e.g. 512,128", cxxopts::value<std::vector<std::string>>())(
      "d,n-depth", "tokens already in the cache", cxxopts::value<std::vector<std::string>>()->default_value("0"))(
      "r,repetitions", "timed runs per test", cxxopts::value<int>()->default_value("5"))(
      "o,output", "md, json, jsonl or csv", cxxopts::value<std::string>()->default_value("md"))(
      "profile", "after each generation test, time each stage of one decode step at its depth");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  const int repetitions = args["repetitions"].as<int>();
  KILN_CHECK(repetitions >= 1 && repetitions <= 1000, "-r {} must be in [1, 1000]", repetitions);
  const std::string format = args["output"].as<std::string>();
  KILN_CHECK(format == "md" || format == "json" || format == "jsonl" || format == "csv",
             "-o '{}' is not md, json, jsonl or csv", format);
  const bool profile = args.count("profile") > 0;

  std::vector<Test> tests;
  for (int64_t depth : int_list(args, "n-depth")) {
    for (int64_t p : int_list(args, "n-prompt"))
      if (p) tests.push_back({p, 0, depth});
    for (int64_t n : int_list(args, "n-gen"))
      if (n) tests.push_back({0, n, depth});
    if (args.count("pg")) {
      const auto pair = int_list(args, "pg");
      KILN_CHECK(pair.size() == 2, "--pg takes two numbers: prompt,generation");
      tests.push_back({pair[0], pair[1], depth});
    }
  }
  KILN_CHECK(!tests.empty(), "nothing to measure: give -p or -n a non-zero length");

  // As llama-bench: the context is what the longest test needs, unless -c says more.
  KILN_CHECK(args.count("model"), "give the model: -m MODEL.kiln (convert one with `kiln convert`)");
  const std::string device = choose_device(args["device"].as<std::string>());
  const int threads = args["threads"].as<int>();
  KILN_CHECK(threads >= 0 && threads <= 1024, "-t {} must be 0 (all cores) or a thread count", threads);
  const int64_t requested_ctx = args["ctx-size"].as<int64_t>();
  KILN_CHECK(requested_ctx >= 0, "-c {} must be 0 (what the tests need) or a positive token count", requested_ctx);
  int64_t needed = 1;
  for (const Test& t : tests) needed = std::max(needed, t.positions());
  const KilnFile file = KilnFile::open(args["model"].as<std::string>());
  const ModelConfig& c = file.config();

  const bool on_gpu = device == "cuda";
  const double copy_gbs = on_gpu ? gpu_copy_bandwidth_gbs() : 0;  // before the model takes the memory
  const GpuMemory gpu_before = on_gpu ? gpu_memory() : GpuMemory{};
  BackendOptions backend_options;
  backend_options.n_ctx = requested_ctx > 0 ? requested_ctx : needed;
  backend_options.n_threads = threads;
  // The CUDA backend checks the cache against the GPU's free memory; a deep test may need over 32 GiB.
  if (on_gpu) backend_options.max_kv_bytes = std::numeric_limits<uint64_t>::max();
  const cuda::KvDType kv_dtype = kv_dtype_from(args, device);
  const uint64_t kv_element_bytes = cuda::kv_dtype_bytes(kv_dtype);
  StageProfiler profiler(on_gpu ? "CUDA" : "CPU", kv_element_bytes);
  if (profile) {
    backend_options.stage_timer = profiler.timer();
    if (!on_gpu) backend_options.on_tensor = profiler.host_clock();
  }
  const int tensor_parallel = tensor_parallel_from(args);
  const std::unique_ptr<Backend> backend_owner =
      make_backend_on(device, file, backend_options, kv_dtype, tensor_parallel, args.count("no-persistent") == 0);
  Backend& backend = *backend_owner;
  for (const Test& t : tests)
    KILN_CHECK(t.positions() <= backend.n_ctx(), "test {} needs {} positions but the context holds {}: raise -c",
               t.name(), t.positions(), backend.n_ctx());

  const ModelBytes bytes = model_bytes(file);
  const double read_gbs = on_gpu ? 0 : streaming_read_gbs(threads);
  // A split model reads its weights on every rank's GPU at once: the peak is theirs together (GPU 0's copy
  // bandwidth times the ranks; the GPUs of one machine are alike).
  const double peak_gbs = on_gpu ? copy_gbs * tensor_parallel : read_gbs;
  Runner runner(backend);
  nlohmann::json rows = nlohmann::json::array();
  std::string profiles_md;
  for (const Test& test : tests) {
    runner.run_once(test);  // warm-up
    std::vector<double> rates, first_token_ms, step_ms;
    for (int r = 0; r < repetitions; ++r) {
      const RunTime time = runner.run_once(test);
      rates.push_back(double(test.n_prompt + test.n_gen) / time.seconds);
      first_token_ms.push_back(1e3 * time.first_token);
      for (double s : time.steps) step_ms.push_back(1e3 * s);
    }
    const double mean = mean_of(rates);
    nlohmann::json row = {{"model", file.path()},
                          {"architecture", c.architecture},
                          {"synthetic", file.synthetic()},
                          {"weight_dtype", bytes.main_dtype},
                          {"model_bytes", file.file_bytes()},
                          {"n_params", bytes.n_params},
                          {"backend", std::string(backend.name())},
                          {"n_threads", threads},
                          {"tensor_parallel", tensor_parallel},
                          {"n_ctx", backend.n_ctx()},
                          {"test", test.name()},
                          {"n_prompt", test.n_prompt},
                          {"n_gen", test.n_gen},
                          {"n_depth", test.n_depth},
                          {"type_kv", cuda::kv_dtype_name(kv_dtype)},
                          {"avg_ts", mean},
                          {"stddev_ts", stddev_of(rates)},
                          {"samples_ts", rates},
                          {"rss_bytes", resident_bytes()},
                          {"read_bandwidth_gbs", read_gbs},
                          {"ttft_ms", mean_of(first_token_ms)},
                          {"samples_ttft_ms", first_token_ms},
                          {"samples_token_ms", step_ms},
                          {"kiln_version", KILN_VERSION},
                          {"build_commit", build_commit()},
                          {"cpu_info", cpu_name()}};
    if (on_gpu) row["gpu_info"] = gpu_name();
    if (on_gpu) row["copy_bandwidth_gbs"] = copy_gbs;
    if (test.n_prompt == 0) {
      // Each generated token reads every weight once, plus the keys and values cached so far: the step at
      // position p reads p + 1 of them, so over the run d + (n + 1) / 2 on average.
      const double kv = double(kv_bytes_per_position(c, kv_element_bytes)) * (double(test.n_depth) + double(test.n_gen + 1) / 2);
      const double achieved = (double(bytes.per_token) + kv) * mean / 1e9;
      row["bytes_per_token"] = double(bytes.per_token) + kv;
      row["achieved_bandwidth_gbs"] = achieved;
      row["bandwidth_percent"] = peak_gbs > 0 ? 100 * achieved / peak_gbs : 0;
    }
    if (on_gpu) {
      const GpuMemoryUse use = gpu_memory_use(backend, gpu_before);
      row["gpu_memory_total_bytes"] = use.total;
      row["gpu_memory_used_bytes"] = use.used;
      row["gpu_weights_bytes"] = use.weights;
      row["gpu_kv_cache_bytes"] = use.kv_cache;
      row["gpu_workspace_bytes"] = use.workspace;
      row["gpu_memory_overhead_bytes"] = use.overhead();
      row["gpu_memory_overhead_percent"] = use.used ? 100.0 * double(use.overhead()) / double(use.used) : 0;
      row["gpu_memory_overhead_device_percent"] = use.total ? 100.0 * double(use.overhead()) / double(use.total) : 0;
    }
    if (profile && test.n_prompt == 0) {
      const int64_t position = test.n_depth;
      std::vector<StageProfile> stages;
      try {  // a failed profile leaves the speed rows standing
        stages = profiler.profile([&] { runner.decode_step(position); }, kProfileSteps, file, position);
      } catch (const Error& e) {
        fmt::print(stderr, "kiln bench: the profile of {} failed: {}\n", test.name(), e.what());
        row["profile_error"] = e.what();
      }
      row["profile_position"] = position;
      if (!stages.empty()) {
        row["profile"] = profile_json(stages);
        profiles_md += profile_markdown(
            stages, fmt::format("{} {}: one decode step at position {} ({}; median of {} steps, layers summed); the "
                                "timed runs took {:.1f} µs a token",
                                test.name(), backend.name(), position,
                                on_gpu ? "CUDA events, without the graph" : "host clock", kProfileSteps, 1e6 / mean));
      }
    }
    rows.push_back(row);
    if (format == "jsonl") fmt::print("{}\n", row.dump());
  }

  if (format == "json") fmt::print("{}\n", rows.dump(2));
  if (format == "csv") {
    fmt::print("model,weight_dtype,n_threads,test,avg_ts,stddev_ts,achieved_bandwidth_gbs,read_bandwidth_gbs\n");
    for (const auto& r : rows)
      fmt::print("{},{},{},{},{:.3f},{:.3f},{},{:.2f}\n", r["model"].get<std::string>(), r["weight_dtype"].get<std::string>(),
                 r["n_threads"].get<int>(), r["test"].get<std::string>(), r["avg_ts"].get<double>(), r["stddev_ts"].get<double>(),
                 r.contains("achieved_bandwidth_gbs") ? fmt::format("{:.2f}", r["achieved_bandwidth_gbs"].get<double>()) : "",
                 read_gbs);
  }
  if (format == "md") {
    fmt::print("| model | size | type | backend | threads | test | t/s | GB/s | % of {} |\n", on_gpu ? "copy" : "read");
    fmt::print("| --- | ---: | --- | --- | ---: | --- | ---: | ---: | ---: |\n");
    for (const auto& r : rows) {
      const bool tg = r.contains("achieved_bandwidth_gbs");
      fmt::print("| {}{} | {} | {} | {} | {} | {} | {:.2f} ± {:.2f} | {} | {} |\n", c.architecture,
                 file.synthetic() ? " (synthetic)" : "", format_bytes(file.file_bytes()),
                 r["weight_dtype"].get<std::string>(),
                 tensor_parallel > 1 ? fmt::format("{} -tp {}", backend.name(), tensor_parallel) : backend.name(),
                 r["n_threads"].get<int>(),
                 r["test"].get<std::string>(), r["avg_ts"].get<double>(), r["stddev_ts"].get<double>(),
                 tg ? fmt::format("{:.1f}", r["achieved_bandwidth_gbs"].get<double>()) : "",
                 tg ? fmt::format("{:.0f}%", r["bandwidth_percent"].get<double>()) : "");
    }
    if (on_gpu) {
      const auto& last = rows.back();
      fmt::print("\ndevice copy: {:.0f} GB/s (read + write); GPU memory in use {} = weights {} + KV cache {} + "
                 "workspace {} + other {} ({:.2f}% of the use, {:.2f}% of the device's {})\n",
                 copy_gbs, gib(last["gpu_memory_used_bytes"].get<double>()), gib(last["gpu_weights_bytes"].get<double>()),
                 gib(last["gpu_kv_cache_bytes"].get<double>()), gib(last["gpu_workspace_bytes"].get<double>()),
                 gib(last["gpu_memory_overhead_bytes"].get<double>()), last["gpu_memory_overhead_percent"].get<double>(),
                 last["gpu_memory_overhead_device_percent"].get<double>(), gib(last["gpu_memory_total_bytes"].get<double>()));
    } else {
      fmt::print("\nstreaming read: {:.1f} GB/s; resident memory {}\n", read_gbs, format_bytes(resident_bytes()));
    }
    fmt::print("{}", profiles_md);
  }
  return 0;
}

}  // namespace kiln
