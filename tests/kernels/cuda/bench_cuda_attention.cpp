// Decode attention benchmark (a build target, not a test): the µs of one attention call and the KV cache
// bytes it streams per second, against the device's copy bandwidth measured in the same run.
//
//   bench_cuda_attention [--quick] [--sweep] [--paged [ROWS]]   (--sweep: also other split counts of the
//   contiguous decode; --paged: the paged rows alone, or only those of ROWS rows)
//
// Contiguous cache: one decode token of a 7B (32 heads / 32 kv heads, head_dim 128), an 8B (32 / 8) and
// SmolLM2 (9 / 3, head_dim 64) at depths 1K, 8K and 32K, f16, fp8 and f32 caches of 32K positions (the
// split count the engine would use for that cache). Paged pool: a decode batch of 64 SmolLM2 rows and of 32
// and 256 7B rows, each its own sequence of 128..1024 keys, one block a row or split in chunks (256 keys;
// 1,024 for 256 rows, as kiln batch splits them), and 32 7B rows of 65..128 keys (kiln batch's 7B row, 32 x
// (64 + 64)). Each call reads another layer's cache, enough layers that their bytes are four times the L2
// cache, as a model's layers do; the calls are captured in a CUDA graph and replayed, so launch gaps count
// as they do in a decode step.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/bandwidth.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/paged_attention.h"

namespace kiln {
namespace {

using cuda::KvDType;

struct Shape {
  const char* name;
  int n_heads, n_kv_heads, head_dim;
};
constexpr Shape kShapes[] = {{"7B", 32, 32, 128}, {"8B", 32, 8, 128}, {"SmolLM2", 9, 3, 64}};
constexpr KvDType kDTypes[] = {KvDType::F16, KvDType::F8, KvDType::F32};
constexpr size_t kTouchTarget = size_t(240) << 20;  // bytes read across the layers: 4x the L2 cache


// Microseconds per call of `step(layer)`, the layers taken in turn: at least 64 calls captured once and
// replayed (the graph's own launch is then a small share, as in a decode step of many layers).
double time_calls(int n_layers, const std::function<void(int, cudaStream_t)>& step, int replays) {
  const int n_calls = std::max(64, n_layers);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());  // the set-up's memsets ran on the legacy stream, which ours skips
  cuda::CudaStream stream;
  cuda::CudaGraph graph;
  graph.capture(stream.get(), [&] {
    for (int c = 0; c < n_calls; ++c) step(c % n_layers, stream.get());
  });
  graph.launch(stream.get());  // warm-up
  stream.synchronize();
  cudaEvent_t start, stop;
  KILN_CUDA_CHECK(cudaEventCreate(&start));
  KILN_CUDA_CHECK(cudaEventCreate(&stop));
  float best_ms = 1e30f;
  for (int r = 0; r < replays; ++r) {
    KILN_CUDA_CHECK(cudaEventRecord(start, stream.get()));
    graph.launch(stream.get());
    KILN_CUDA_CHECK(cudaEventRecord(stop, stream.get()));
    KILN_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    best_ms = std::min(best_ms, ms);
  }
  KILN_CUDA_CHECK(cudaEventDestroy(start));
  KILN_CUDA_CHECK(cudaEventDestroy(stop));
  return double(best_ms) * 1e3 / n_calls;
}

void row(const std::string& what, const std::string& kv, int64_t depth, int splits, double us, double bytes,
         double copy_gbs) {
  const double gbs = bytes / (us * 1e-6) / 1e9;
  std::printf("| %-28s | %s | %6lld | %4d | %8.2f | %7.0f | %5.1f%% |\n", what.c_str(), kv.c_str(),
              static_cast<long long>(depth), splits, us, gbs, 100.0 * gbs / copy_gbs);
}

// splits 0: attention_splits for the 32K cache.
void bench_contiguous(const Shape& s, KvDType dtype, int64_t depth, double copy_gbs, int replays, int splits = 0) {
  const int64_t max_keys = 32768;
  const size_t elem = cuda::kv_dtype_bytes(dtype);
  const size_t layer_bytes = size_t(s.n_kv_heads) * size_t(max_keys) * size_t(s.head_dim) * elem;
  const double touched = 2.0 * double(s.n_kv_heads) * double(depth) * s.head_dim * double(elem);
  const int n_layers = int(std::clamp<double>(double(kTouchTarget) / touched + 1, 2, 512));
  cuda::DeviceBuffer k(layer_bytes * size_t(n_layers)), v(layer_bytes * size_t(n_layers));
  KILN_CUDA_CHECK(cudaMemset(k.data(), 0x3c, k.bytes()));
  KILN_CUDA_CHECK(cudaMemset(v.data(), 0x3c, v.bytes()));
  if (splits == 0) splits = cuda::attention_splits(1, s.n_heads, s.n_kv_heads, s.head_dim, max_keys, cuda::multiprocessor_count());
  const size_t q_floats = size_t(s.n_heads) * size_t(s.head_dim);
  cuda::DeviceBuffer q(q_floats * sizeof(float)), out(q_floats * sizeof(float)),
      partial(std::max<size_t>(1, cuda::attention_partial_floats(splits, 1, s.n_heads, s.head_dim)) * sizeof(float)),
      first(sizeof(int32_t)), counters(cuda::attention_counter_ints(s.n_kv_heads) * sizeof(int32_t));
  KILN_CUDA_CHECK(cudaMemset(q.data(), 0, q.bytes()));
  KILN_CUDA_CHECK(cudaMemset(counters.data(), 0, counters.bytes()));  // the merge fused, as the backend runs it
  const auto position = int32_t(depth - 1);
  KILN_CUDA_CHECK(cudaMemcpy(first.data(), &position, sizeof position, cudaMemcpyHostToDevice));
  cuda::AttentionArgs a;
  a.q = q.as<float>();
  a.kv_dtype = dtype;
  a.out = out.as<float>();
  a.first_position = first.as<int32_t>();
  a.n_tokens = 1;
  a.n_heads = s.n_heads;
  a.n_kv_heads = s.n_kv_heads;
  a.head_dim = s.head_dim;
  a.kv_stride = max_keys;
  a.scale = 1.0f / std::sqrt(float(s.head_dim));
  a.n_splits = splits;
  a.partial = partial.as<float>();
  a.split_counters = counters.as<int>();
  const double us = time_calls(
      n_layers,
      [&](int l, cudaStream_t stream) {
        a.k_cache = k.as<char>() + size_t(l) * layer_bytes;
        a.v_cache = v.as<char>() + size_t(l) * layer_bytes;
        a.stream = stream;
        cuda::attention(a);
      },
      replays);
  row(std::string(s.name) + " decode", cuda::kv_dtype_name(dtype), depth, splits, us, touched, copy_gbs);
}

// n_rows sequences of min_len..max_len keys, each one decode row.
void bench_paged(const Shape& s, int n_rows, KvDType dtype, bool split, double copy_gbs, int replays,
                 int64_t chunk_keys, int64_t min_len = 128, int64_t max_len = 1024) {
  const int64_t bs = 16, max_blocks = (max_len + bs - 1) / bs;
  const auto n = static_cast<size_t>(n_rows);
  std::vector<int32_t> positions(n), seqs(n), table(n * size_t(max_blocks));
  double keys = 0;
  for (int r = 0; r < n_rows; ++r) {
    const int64_t len = min_len + (max_len - min_len) * r / std::max(1, n_rows - 1);
    positions[size_t(r)] = int32_t(len - 1);
    seqs[size_t(r)] = r;
    keys += double(len);
    for (int64_t b = 0; b < max_blocks; ++b) table[size_t(r * max_blocks + b)] = int32_t(r * max_blocks + b);
  }
  const size_t elem = cuda::kv_dtype_bytes(dtype);
  const size_t pool_bytes = size_t(n_rows * max_blocks * bs) * size_t(s.n_kv_heads * s.head_dim) * elem;
  const double touched = 2.0 * keys * s.n_kv_heads * s.head_dim * double(elem);
  const int n_layers = int(std::clamp<double>(double(kTouchTarget) / touched + 1, 2, 256));
  cuda::DeviceBuffer k(pool_bytes * size_t(n_layers)), v(pool_bytes * size_t(n_layers));
  KILN_CUDA_CHECK(cudaMemset(k.data(), 0x3c, k.bytes()));
  KILN_CUDA_CHECK(cudaMemset(v.data(), 0x3c, v.bytes()));
  auto upload = [](const std::vector<int32_t>& host) {
    cuda::DeviceBuffer d(host.size() * sizeof(int32_t));
    KILN_CUDA_CHECK(cudaMemcpy(d.data(), host.data(), d.bytes(), cudaMemcpyHostToDevice));
    return d;
  };
  const cuda::DeviceBuffer d_table = upload(table), d_seqs = upload(seqs), d_pos = upload(positions);
  const size_t q_floats = size_t(n_rows) * size_t(s.n_heads) * size_t(s.head_dim);
  const size_t n_partial =
      split ? cuda::paged_attention_partial_floats(n_rows, s.n_heads, s.head_dim, max_len, chunk_keys) : 0;
  cuda::DeviceBuffer q(q_floats * sizeof(float)), out(q_floats * sizeof(float)),
      partial(std::max<size_t>(n_partial, 1) * sizeof(float));
  KILN_CUDA_CHECK(cudaMemset(q.data(), 0, q.bytes()));
  cuda::PagedAttentionArgs a;
  a.kv.block_table = d_table.as<int32_t>();
  a.kv.max_blocks_per_seq = max_blocks;
  a.kv.block_positions = bs;
  a.kv.n_kv_heads = s.n_kv_heads;
  a.kv.head_dim = s.head_dim;
  a.kv.dtype = dtype;
  a.q = q.as<float>();
  a.out = out.as<float>();
  a.row_seq = d_seqs.as<int32_t>();
  a.row_position = d_pos.as<int32_t>();
  a.n_rows = n_rows;
  a.n_heads = s.n_heads;
  a.scale = 1.0f / std::sqrt(float(s.head_dim));
  a.partial = n_partial > 0 ? partial.as<float>() : nullptr;
  a.chunk_keys = chunk_keys;
  const double us = time_calls(
      n_layers,
      [&](int l, cudaStream_t stream) {
        a.kv.k_pool = k.as<char>() + size_t(l) * pool_bytes;
        a.kv.v_pool = v.as<char>() + size_t(l) * pool_bytes;
        a.stream = stream;
        cuda::paged_attention(a);
      },
      replays);
  const int chunks = split ? int((max_len + chunk_keys - 1) / chunk_keys) : 1;
  const std::string lengths = min_len == 128 ? "" : " " + std::to_string(min_len) + "..";
  row(std::string(s.name) + " paged x" + std::to_string(n_rows) + lengths + (split ? " split" : ""),
      cuda::kv_dtype_name(dtype), max_len, chunks, us, touched, copy_gbs);
}

int run(int argc, char** argv) {
  bool quick = false, sweep = false, paged_only = false;
  int only_rows = 0;  // > 0: the paged rows of that many rows alone
  for (int i = 1; i < argc; ++i) {
    quick |= std::strcmp(argv[i], "--quick") == 0;
    sweep |= std::strcmp(argv[i], "--sweep") == 0;
    if (std::strcmp(argv[i], "--paged") == 0) {
      paged_only = true;
      if (i + 1 < argc && argv[i + 1][0] != '-') only_rows = std::atoi(argv[++i]);
    }
  }
  const int replays = quick ? 3 : 10;
  KILN_CHECK(cuda::device_available(), "bench_cuda_attention needs a CUDA GPU");
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double copy_gbs = cuda::copy_bandwidth_gbs();
  const auto paged = [&](const Shape& s, int n_rows, KvDType dtype, bool split, int64_t chunk, int64_t min_len = 128,
                         int64_t max_len = 1024) {
    if (only_rows == 0 || only_rows == n_rows)
      bench_paged(s, n_rows, dtype, split, copy_gbs, replays, chunk, min_len, max_len);
  };
  std::printf("%s, %d SMs, L2 %d MB; copy bandwidth %.0f GB/s (read + write)\n\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_gbs);
  std::printf("| %-28s | kv  | depth  | splt | µs/call  | KV GB/s | of copy |\n", "attention");
  std::printf("|------------------------------|-----|--------|------|----------|---------|---------|\n");
  if (!paged_only)
    for (const Shape& s : kShapes)
      for (KvDType dtype : kDTypes)
        for (int64_t depth : {1024, 8192, 32768}) bench_contiguous(s, dtype, depth, copy_gbs, replays);
  for (KvDType dtype : kDTypes) {
    for (bool split : {false, true}) {
      paged(kShapes[2], 64, dtype, split, cuda::kPagedAttentionChunkKeys);
      paged(kShapes[0], 32, dtype, split, cuda::kPagedAttentionChunkKeys);
    }
    // kiln batch's 7B row, 32 x (64 + 64): rows of 65..128 keys, one block a row.
    paged(kShapes[0], 32, dtype, false, cuda::kPagedAttentionChunkKeys, 65, 128);
    paged(kShapes[0], 256, dtype, true, 1024);
  }
  if (sweep)  // split counts other than attention_splits' (f16 caches)
    for (const Shape& s : kShapes)
      for (KvDType dtype : {KvDType::F16})
        for (int64_t depth : {8192, 32768})
          for (int splits : {8, 16, 24, 32, 48, 64, 128}) bench_contiguous(s, dtype, depth, copy_gbs, replays, splits);
  return 0;
}

}  // namespace
}  // namespace kiln

int main(int argc, char** argv) {
  try {
    return kiln::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_attention: %s\n", e.what());
    return 1;
  }
}
