#include "main/bench_memory.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <vector>

#include "kernels/cpu/thread_pool.h"

namespace kiln {

uint64_t tensor_bytes(const TensorView& t) {
  return t.bytes + (t.scales ? uint64_t(t.numel()) / t.group_size * 2 : 0);
}

ModelBytes model_bytes(const KilnFile& file) {
  ModelBytes out;
  std::map<std::string, uint64_t> by_dtype;
  for (const auto& t : file.tensors()) {
    if (t.dtype == DType::U8) continue;
    const uint64_t bytes = tensor_bytes(t);
    const bool lookup_only = t.name == "token_embd.weight" && !file.config().tied_embeddings;
    const bool rows_only = lookup_only || t.name == "pos_embd.weight";
    out.per_token += rows_only ? bytes / uint64_t(t.rows()) : bytes;
    by_dtype[std::string(dtype_name(t.dtype))] += bytes;
    out.n_params += uint64_t(t.numel());
  }
  uint64_t most = 0;
  for (const auto& [dtype, bytes] : by_dtype)
    if (bytes > most) most = bytes, out.main_dtype = dtype;
  return out;
}

uint64_t kv_bytes_per_position(const ModelConfig& c, uint64_t element_bytes) {
  return uint64_t(c.n_layers) * 2 * uint64_t(c.kv_dim()) * element_bytes;
}

double streaming_read_gbs(int n_threads) {
  constexpr size_t kBytes = size_t(1) << 30;
  std::vector<uint64_t> buffer(kBytes / sizeof(uint64_t), 1);
  ThreadPool pool(n_threads);
  std::vector<uint64_t> sums(size_t(pool.size()) * 8);  // a cache line per chunk: no false sharing
  double best = 0;
  for (int round = 0; round < 4; ++round) {
    const auto start = std::chrono::steady_clock::now();
    pool.parallel_for(pool.size(), [&](int64_t begin, int64_t end) {
      for (int64_t part = begin; part < end; ++part) {
        const size_t n = buffer.size() / size_t(pool.size());
        const uint64_t* p = buffer.data() + size_t(part) * n;
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t i = 0; i + 4 <= n; i += 4) a += p[i], b += p[i + 1], c += p[i + 2], d += p[i + 3];
        sums[size_t(part) * 8] = a + b + c + d;
      }
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, double(kBytes) / seconds / 1e9);
  }
  return best;
}

uint64_t resident_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * uint64_t(::sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace kiln
