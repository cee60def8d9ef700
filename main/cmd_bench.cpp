// kiln bench: llama-bench's flags and output. Each parameter is a comma list and the run is their
// product; prompt processing (pp), generation (tg) and both (pg) are timed over -r repetitions after a
// warm-up, and each row reports the achieved memory bandwidth against a plain streaming read.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "engine/error.h"
#include "main/bench_memory.h"
#include "main/cli.h"
#include "main/commands.h"
#include "main/model_options.h"

namespace kiln {
namespace {

struct Test {
  int64_t n_prompt = 0, n_gen = 0, n_depth = 0;
  std::string name() const {
    std::string s = n_prompt && n_gen ? fmt::format("pp{}+tg{}", n_prompt, n_gen)
                    : n_prompt        ? fmt::format("pp{}", n_prompt)
                                      : fmt::format("tg{}", n_gen);
    return n_depth ? fmt::format("{} @ d{}", s, n_depth) : s;
  }
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

// Seconds for one run of the test from an empty cache (the depth is filled first, untimed).
double run_once(Backend& backend, const Test& test, std::mt19937& rng, std::vector<float>& logits) {
  std::uniform_int_distribution<int32_t> token(0, int32_t(backend.config().n_vocab - 1));
  std::vector<int32_t> tokens(size_t(std::max<int64_t>(test.n_prompt, test.n_depth)));
  for (auto& t : tokens) t = token(rng);
  backend.reset();
  if (test.n_depth) backend.forward(tokens.data(), test.n_depth, 0, nullptr, false);
  const auto start = std::chrono::steady_clock::now();
  int64_t position = test.n_depth;
  if (test.n_prompt) {
    backend.forward(tokens.data(), test.n_prompt, position, logits.data(), false);
    position += test.n_prompt;
  }
  for (int64_t i = 0; i < test.n_gen; ++i, ++position) {
    const int32_t next = token(rng);
    backend.forward(&next, 1, position, logits.data(), false);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Measure prompt processing and generation speed, llama-bench style.");
  add_model_options(options);
  options.add_options()("p,n-prompt", "prompt lengths", cxxopts::value<std::vector<std::string>>()->default_value("512"))(
      "n,n-gen", "generation lengths", cxxopts::value<std::vector<std::string>>()->default_value("128"))(
      "pg", "prompt,generation pairs, e.g. 512,128", cxxopts::value<std::vector<std::string>>())(
      "d,n-depth", "tokens already in the cache", cxxopts::value<std::vector<std::string>>()->default_value("0"))(
      "r,repetitions", "timed runs per test", cxxopts::value<int>()->default_value("5"))(
      "o,output", "md, json, jsonl or csv", cxxopts::value<std::string>()->default_value("md"));
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  const int repetitions = args["repetitions"].as<int>();
  KILN_CHECK(repetitions >= 1 && repetitions <= 1000, "-r {} must be in [1, 1000]", repetitions);
  const std::string format = args["output"].as<std::string>();
  KILN_CHECK(format == "md" || format == "json" || format == "jsonl" || format == "csv",
             "-o '{}' is not md, json, jsonl or csv", format);

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

  LoadedModel model = load_model(args);
  Backend& backend = *model.backend;
  const ModelConfig& c = backend.config();
  for (const Test& t : tests)
    KILN_CHECK(t.n_depth + t.n_prompt + t.n_gen <= backend.n_ctx(),
               "test {} needs {} positions but the context holds {}: raise -c", t.name(),
               t.n_depth + t.n_prompt + t.n_gen, backend.n_ctx());

  const ModelBytes bytes = model_bytes(model.file);
  // The bandwidth ceiling is a streaming read of host memory; the GPU's copy bandwidth is not measured
  // yet, so CUDA rows report achieved GB/s without a percentage.
  const bool on_cpu = backend.name() == "CPU";
  const double read_gbs = on_cpu ? streaming_read_gbs(args["threads"].as<int>()) : 0;
  std::vector<float> logits(size_t(c.n_vocab));
  std::mt19937 rng(1234);
  nlohmann::json rows = nlohmann::json::array();
  for (const Test& test : tests) {
    run_once(backend, test, rng, logits);  // warm-up
    std::vector<double> rates;
    for (int r = 0; r < repetitions; ++r)
      rates.push_back(double(test.n_prompt + test.n_gen) / run_once(backend, test, rng, logits));
    const double mean = std::accumulate(rates.begin(), rates.end(), 0.0) / double(rates.size());
    double variance = 0;
    for (double x : rates) variance += (x - mean) * (x - mean);
    const double stddev = rates.size() > 1 ? std::sqrt(variance / double(rates.size() - 1)) : 0;
    nlohmann::json row = {{"model", model.file.path()},
                          {"architecture", c.architecture},
                          {"weight_dtype", bytes.main_dtype},
                          {"model_bytes", model.file.file_bytes()},
                          {"backend", std::string(backend.name())},
                          {"n_threads", args["threads"].as<int>()},
                          {"test", test.name()},
                          {"n_prompt", test.n_prompt},
                          {"n_gen", test.n_gen},
                          {"n_depth", test.n_depth},
                          {"avg_ts", mean},
                          {"stddev_ts", stddev},
                          {"samples_ts", rates},
                          {"rss_bytes", resident_bytes()},
                          {"read_bandwidth_gbs", read_gbs}};
    if (test.n_prompt == 0) {
      // Each generated token reads every weight once, plus the cached keys and values so far.
      const double kv = double(kv_bytes_per_position(c)) * (double(test.n_depth) + double(test.n_gen) / 2);
      const double achieved = (double(bytes.per_token) + kv) * mean / 1e9;
      row["bytes_per_token"] = double(bytes.per_token) + kv;
      row["achieved_bandwidth_gbs"] = achieved;
      if (on_cpu) row["bandwidth_percent"] = 100 * achieved / read_gbs;
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
    fmt::print("| model | size | type | backend | threads | test | t/s | GB/s | % of read |\n");
    fmt::print("| --- | ---: | --- | --- | ---: | --- | ---: | ---: | ---: |\n");
    for (const auto& r : rows) {
      const bool tg = r.contains("achieved_bandwidth_gbs");
      fmt::print("| {} | {} | {} | {} | {} | {} | {:.2f} ± {:.2f} | {} | {} |\n", c.architecture,
                 format_bytes(model.file.file_bytes()), r["weight_dtype"].get<std::string>(), backend.name(),
                 r["n_threads"].get<int>(),
                 r["test"].get<std::string>(), r["avg_ts"].get<double>(), r["stddev_ts"].get<double>(),
                 tg ? fmt::format("{:.1f}", r["achieved_bandwidth_gbs"].get<double>()) : "",
                 r.contains("bandwidth_percent") ? fmt::format("{:.0f}%", r["bandwidth_percent"].get<double>()) : "");
    }
    fmt::print("\nstreaming read: {:.1f} GB/s; resident memory {}\n", read_gbs, format_bytes(resident_bytes()));
  }
  return 0;
}

}  // namespace kiln
