// kiln bench's bandwidth and profile fields on the CPU, on a synthetic test-tiny model, against the bytes
// counted by hand from the shape.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "tests/convert/kiln_file_fixture.h"
#include "tests/run_process.h"

namespace kiln {
namespace {

using testing::run_kiln;

// test-tiny: dim 64, 2 layers, 4 heads of 16 (2 kv heads), ffn 192, vocab 512, untied; f16 matrices.
constexpr double kDim = 64, kLayers = 2, kKvDim = 32, kFfn = 192, kVocab = 512;
constexpr double kNorm = kDim * 4;                      // f32
constexpr double kQkv = (kDim + 2 * kKvDim) * kDim * 2;  // f16
constexpr double kOut = kDim * kDim * 2, kUp = 2 * kFfn * kDim * 2, kDown = kDim * kFfn * 2;
constexpr double kHead = kVocab * kDim * 2, kEmbeddingRow = kDim * 2;
constexpr double kWeightsPerToken = kLayers * (2 * kNorm + kQkv + kOut + kUp + kDown) + kEmbeddingRow + kNorm + kHead;
constexpr double kKvPerPosition = kLayers * 2 * kKvDim * 4;  // f32 keys and values
constexpr double kParams = kLayers * (2 * kDim + (kDim + 2 * kKvDim) * kDim + kDim * kDim + 3 * kFfn * kDim) +
                           2 * kVocab * kDim + kDim;

class Bench : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir;
    const auto r = run_kiln({"convert", "--synthetic", "test-tiny", "-o", model()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string model() { return dir_->file("tiny.kiln"); }
  static testing::TempDir* dir_;
};
testing::TempDir* Bench::dir_ = nullptr;

const nlohmann::json& row_named(const nlohmann::json& rows, const std::string& test) {
  for (const auto& r : rows)
    if (r["test"] == test) return r;
  ADD_FAILURE() << "no row " << test;
  static const nlohmann::json none = nlohmann::json::object();
  return none;
}

// Every row says what built it and the CPU it ran on, and times its first token and each generated one:
// a prompt row's first token is its whole run, a generation row's token times add up to its run.
TEST_F(Bench, RowsTimeTheFirstAndEveryTokenAndNameTheBuild) {
  const auto r = run_kiln({"bench", "-m", model(), "--device", "cpu", "-t", "1", "-p", "8", "-n", "4", "-r", "3",
                           "-o", "json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = nlohmann::json::parse(r.out);
  const std::string version = run_kiln({"--version"}).out;
  for (const auto& row : rows) {
    EXPECT_NE(version.find("(git " + row["build_commit"].get<std::string>() + ")"), std::string::npos) << version;
    EXPECT_NE(version.find("kiln " + row["kiln_version"].get<std::string>()), std::string::npos) << version;
    EXPECT_TRUE(row.contains("cpu_info"));
    EXPECT_FALSE(row.contains("gpu_info")) << "a CPU run";
  }
  const auto& pp = row_named(rows, "pp8");
  const auto& tg = row_named(rows, "tg4");
  ASSERT_EQ(pp["samples_ttft_ms"].size(), 3u);
  EXPECT_TRUE(pp["samples_token_ms"].empty());
  ASSERT_EQ(tg["samples_token_ms"].size(), 12u) << "4 tokens in each of 3 repetitions";
  for (size_t i = 0; i < 3; ++i) {
    const double pp_seconds = 8 / pp["samples_ts"][i].get<double>();
    EXPECT_NEAR(pp["samples_ttft_ms"][i].get<double>(), 1e3 * pp_seconds, 1e-3 * pp_seconds * 1e3 + 0.01);
    double tokens_ms = 0;
    for (size_t t = 0; t < 4; ++t) tokens_ms += tg["samples_token_ms"][4 * i + t].get<double>();
    const double tg_ms = 1e3 * 4 / tg["samples_ts"][i].get<double>();
    EXPECT_LE(tokens_ms, tg_ms);
    EXPECT_GE(tokens_ms, 0.5 * tg_ms);  // loose: a preemption between two steps counts in the run alone
    EXPECT_EQ(tg["samples_ttft_ms"][i], tg["samples_token_ms"][4 * i]) << "the first generated token's step";
  }
}

TEST_F(Bench, DecodeRowsStateTheirBandwidthFromTheBytesTheyRead) {
  const auto r = run_kiln({"bench", "-m", model(), "--device", "cpu", "-t", "1", "-p", "8", "-n", "4", "-d", "0,16",
                           "-r", "2", "-o", "json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = nlohmann::json::parse(r.out);
  ASSERT_EQ(rows.size(), 4u);
  for (const auto& row : rows) {
    EXPECT_EQ(row["synthetic"], true);
    EXPECT_EQ(row["n_ctx"], 24) << "the context is what the longest test needs (pp8 @ d16)";
    EXPECT_EQ(row["n_params"].get<double>(), kParams);
    EXPECT_FALSE(row.contains("copy_bandwidth_gbs")) << "CPU rows have no GPU fields";
    EXPECT_FALSE(row.contains("gpu_memory_overhead_bytes"));
  }
  EXPECT_FALSE(row_named(rows, "pp8").contains("bandwidth_percent")) << "prompt rows state no bandwidth";
  for (const auto& [test, depth] : {std::pair<std::string, double>{"tg4", 0}, {"tg4 @ d16", 16}}) {
    const auto& row = row_named(rows, test);
    // Step p reads p + 1 cached positions: over 4 steps from the depth, depth + 2.5 on average.
    const double bytes = kWeightsPerToken + kKvPerPosition * (depth + 2.5);
    EXPECT_DOUBLE_EQ(row["bytes_per_token"].get<double>(), bytes) << test;
    const double achieved = bytes * row["avg_ts"].get<double>() / 1e9;
    EXPECT_NEAR(row["achieved_bandwidth_gbs"].get<double>(), achieved, achieved * 1e-9) << test;
    const double read = row["read_bandwidth_gbs"].get<double>();
    ASSERT_GT(read, 0);
    EXPECT_NEAR(row["bandwidth_percent"].get<double>(), 100 * achieved / read, 1e-6 * achieved / read) << test;
  }
}

TEST_F(Bench, ProfileTimesEveryStageAndCountsItsBytes) {
  const auto r = run_kiln({"bench", "-m", model(), "--device", "cpu", "-t", "1", "-p", "0", "-n", "4", "-d", "8",
                           "-r", "1", "-o", "json", "--profile"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = nlohmann::json::parse(r.out);
  ASSERT_EQ(rows.size(), 1u);
  const auto& row = rows[0];
  ASSERT_TRUE(row["profile"].is_array());
  EXPECT_EQ(row["profile_position"], 8);
  // The bytes each stage reads, by hand: every layer's weights of the stage, the KV cache at position 8.
  const std::map<std::string, double> want = {
      {"embedding", kEmbeddingRow},
      {"norm + QKV", kLayers * (kNorm + kQkv)},
      {"rotary", 0},
      {"KV append + attention", kKvPerPosition * (1 + 9)},
      {"out proj", kLayers * kOut},
      {"residual + norm", kLayers * kNorm},
      {"MLP up + activation", kLayers * kUp},
      {"down + residual", kLayers * kDown},
      {"LM head", kNorm + kHead},
  };
  double total_us = 0, total_bytes = 0;
  std::map<std::string, double> got;
  for (const auto& stage : row["profile"]) {
    const double us = stage["us"].get<double>(), bytes = stage["bytes"].get<double>();
    got[stage["stage"].get<std::string>()] = bytes;
    EXPECT_GT(us, 0) << stage.dump();
    if (bytes > 0) {
      EXPECT_NEAR(stage["gbs"].get<double>(), bytes / us / 1e3, 1e-9 * bytes / us) << stage.dump();
    }
    total_us += us, total_bytes += bytes;
  }
  EXPECT_EQ(got, want);
  EXPECT_DOUBLE_EQ(total_bytes, kWeightsPerToken + kKvPerPosition * 10);
  // Microseconds: the stages add up to about the time of a token in the timed runs (loose: a shared machine).
  const double step_us = 1e6 / row["avg_ts"].get<double>();
  EXPECT_GT(total_us, step_us / 20);
  EXPECT_LT(total_us, step_us * 20);

  const auto md = run_kiln({"bench", "-m", model(), "--device", "cpu", "-t", "1", "-p", "0", "-n", "2", "-r", "1",
                            "--profile"});
  ASSERT_EQ(md.exit_code, 0) << md.err;
  EXPECT_NE(md.out.find("one decode step at position 0"), std::string::npos) << md.out;
  EXPECT_NE(md.out.find("| KV append + attention |"), std::string::npos) << md.out;
  EXPECT_NE(md.out.find("| total |"), std::string::npos) << md.out;
}

// On a GPU (skipped elsewhere): the device copy bandwidth, the memory beyond weights + KV + workspace, and
// the CUDA backend's fused stages.
TEST_F(Bench, CudaRowsStateCopyBandwidthMemoryAndFusedStages) {
  const auto r = run_kiln({"bench", "-m", model(), "--device", "cuda", "-p", "0", "-n", "4", "-d", "8", "-r", "2",
                           "-o", "json", "--profile"});
  if (r.exit_code != 0 && (r.err.find("without CUDA") != std::string::npos || r.err.find("no CUDA GPU") != std::string::npos))
    GTEST_SKIP() << r.err;
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto row = nlohmann::json::parse(r.out).at(0);
  EXPECT_EQ(row["backend"], "CUDA");
  const double copy = row["copy_bandwidth_gbs"].get<double>(), achieved = row["achieved_bandwidth_gbs"].get<double>();
  EXPECT_GT(copy, 100) << "a GPU copies far faster than this";
  EXPECT_NEAR(row["bandwidth_percent"].get<double>(), 100 * achieved / copy, 1e-6 * achieved / copy);

  const double n_ctx = row["n_ctx"].get<double>();
  EXPECT_EQ(n_ctx, 12);
  EXPECT_EQ(row["gpu_kv_cache_bytes"].get<double>(), 2 * kLayers * kKvDim * n_ctx * 4);
  EXPECT_GE(row["gpu_weights_bytes"].get<double>(), kWeightsPerToken - kEmbeddingRow + kVocab * kDim * 2);
  const double used = row["gpu_memory_used_bytes"].get<double>(), overhead = row["gpu_memory_overhead_bytes"].get<double>();
  EXPECT_DOUBLE_EQ(overhead, used - row["gpu_weights_bytes"].get<double>() - row["gpu_kv_cache_bytes"].get<double>() -
                                 row["gpu_workspace_bytes"].get<double>());
  EXPECT_GE(overhead, 0);
  EXPECT_NEAR(row["gpu_memory_overhead_percent"].get<double>(), 100 * overhead / used, 1e-9 * used);
  EXPECT_NEAR(row["gpu_memory_overhead_device_percent"].get<double>(),
              100 * overhead / row["gpu_memory_total_bytes"].get<double>(), 1e-6);

  const std::map<std::string, double> want = {
      {"embedding", kEmbeddingRow},
      {"norm + QKV", kLayers * (kNorm + kQkv)},
      {"rotary + KV append", kKvPerPosition},
      {"attention", kKvPerPosition * 9},
      {"out proj", kLayers * kOut},
      {"residual + norm + MLP up", kLayers * (kNorm + kUp)},
      {"activation", 0},
      {"down + residual", kLayers * kDown},
      {"LM head", kNorm + kHead},
  };
  std::map<std::string, double> got;
  for (const auto& stage : row["profile"]) {
    got[stage["stage"].get<std::string>()] = stage["bytes"].get<double>();
    EXPECT_GT(stage["us"].get<double>(), 0) << stage.dump();
  }
  EXPECT_EQ(got, want);
}

TEST_F(Bench, SyntheticConversionNeedsAKnownShapeAndNoSource) {
  auto r = run_kiln({"convert", "--synthetic", "gpt-5", "-o", dir_->file("x.kiln")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("smollm2-135m"), std::string::npos) << r.err;
  r = run_kiln({"convert", "some.gguf", "--synthetic", "test-tiny", "-o", dir_->file("x.kiln")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("not both"), std::string::npos) << r.err;
  r = run_kiln({"info", model()});
  EXPECT_NE(r.out.find("\"synthetic\":true"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace kiln
