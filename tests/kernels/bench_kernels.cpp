// Kernel benchmarks (not a test): GEMV bandwidth on SmolLM2-135M shapes next to a plain streaming read
// of the same footprint, prompt GEMM throughput, attention and the thread pool's per-call cost.
//
//   bench_kernels [--benchmark_filter=...]   environment: KILN_BENCH_THREADS (default 2),
//                                            KILN_BENCH_FOOTPRINT_MB (default 256), KILN_CPU_LEVEL
//
// Decode streams every weight once per token, so each GEMV benchmark cycles through enough copies of its
// matrix to fill the footprint: the numbers are memory bandwidth, not cache bandwidth, as in a model.
#include <benchmark/benchmark.h>

#if defined(__x86_64__)
#include "kernels/cpu/x86_intrinsics.h"
#endif

#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/half.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu_level.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/residual.h"
#include "kernels/cpu/rotary.h"
#include "kernels/cpu/thread_pool.h"

namespace kiln {
namespace {

int bench_threads() {
  const char* v = std::getenv("KILN_BENCH_THREADS");
  return v != nullptr ? std::atoi(v) : 2;
}

size_t footprint_bytes() {
  const char* v = std::getenv("KILN_BENCH_FOOTPRINT_MB");
  return size_t(v != nullptr ? std::atoi(v) : 256) << 20;
}

ThreadPool& pool() {
  static ThreadPool instance(bench_threads());
  return instance;
}

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<unsigned char, AlignedFree>;

Buffer aligned_buffer(size_t bytes) {
  auto* p = static_cast<unsigned char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
  return Buffer(p);
}

// Values in [-1, 1] (no subnormals: they would make the arithmetic, not the memory, the bottleneck).
void fill(DType dtype, unsigned char* data, size_t n, size_t seed) {
  for (size_t i = 0; i < n; ++i) {
    const float v = float(int((i * 37 + seed) % 61) - 30) / 30.0f;
    if (dtype == DType::F32) std::memcpy(data + 4 * i, &v, 4);
    if (dtype == DType::F16 || dtype == DType::BF16) {
      const uint16_t h = dtype == DType::F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
      std::memcpy(data + 2 * i, &h, 2);
    }
    if (dtype == DType::I8) data[i] = static_cast<unsigned char>(int8_t(v * 127));
  }
}

// Copies of one weight matrix whose data fill the footprint (at least one copy).
struct WeightCopies {
  std::vector<Buffer> data, scales;
  std::vector<TensorView> views;
  size_t bytes_per_copy = 0;  // values and scales: what one matmul streams

  // copies == 0: as many as fill the footprint.
  WeightCopies(DType dtype, int64_t n_out, int64_t n_in, size_t copies) {
    const uint32_t group = 32;
    const size_t value_bytes = size_t(n_out * n_in) * dtype_bytes(dtype);
    const size_t scale_bytes = dtype == DType::I8 ? size_t(n_out * n_in / group) * 2 : 0;
    bytes_per_copy = value_bytes + scale_bytes;
    if (copies == 0) copies = std::max<size_t>(1, footprint_bytes() / bytes_per_copy);
    for (size_t c = 0; c < copies; ++c) {
      Buffer d = aligned_buffer(value_bytes);
      fill(dtype, d.get(), size_t(n_out * n_in), c);
      TensorView v;
      v.name = "bench";
      v.dtype = dtype;
      v.n_dims = 2;
      v.dims = {n_out, n_in, 1, 1};
      v.data = d.get();
      v.bytes = value_bytes;
      if (dtype == DType::I8) {
        Buffer s = aligned_buffer(scale_bytes);
        auto* h = reinterpret_cast<uint16_t*>(s.get());
        for (size_t i = 0; i < scale_bytes / 2; ++i) h[i] = fp32_to_fp16(0.01f);
        v.scales = h;
        v.group_size = group;
        scales.push_back(std::move(s));
      }
      data.push_back(std::move(d));
      views.push_back(v);
    }
  }
};

// amount per second (bytes in GB/s when kIs1000 is meant: decimal prefixes).
benchmark::Counter rate(double amount) {
  return benchmark::Counter(amount, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void run_matmul(benchmark::State& state, DType dtype) {
  const int64_t n_out = state.range(0), n_in = state.range(1), n_tokens = state.range(2);
  // Prompt batches reuse each weight many times: one copy is what a real prefill sees too.
  WeightCopies w(dtype, n_out, n_in, n_tokens > 1 ? 1 : 0);
  std::vector<float> x(size_t(n_tokens * n_in), 0.5f), y(size_t(n_tokens * n_out));
  size_t next = 0;
  for (auto _ : state) {
    matmul(w.views[next], x.data(), y.data(), n_tokens, pool());
    next = next + 1 == w.views.size() ? 0 : next + 1;
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GB/s"] = rate(double(w.bytes_per_copy));
  state.counters["GFLOP/s"] = rate(2.0 * double(n_out * n_in * n_tokens) / 1e9);
  state.counters["tokens/s"] = rate(double(n_tokens));
  state.SetLabel(std::string(cpu_level_name(cpu_level_default())) + " copies=" + std::to_string(w.views.size()));
}

void BM_MatmulF16(benchmark::State& state) { run_matmul(state, DType::F16); }
void BM_MatmulInt8(benchmark::State& state) { run_matmul(state, DType::I8); }
void BM_MatmulBF16(benchmark::State& state) { run_matmul(state, DType::BF16); }
void BM_MatmulF32(benchmark::State& state) { run_matmul(state, DType::F32); }

// SmolLM2-135M: q/o 576x576, gate/up 1536x576, down 576x1536, LM head 49152x576; decode and a 128-token prompt.
void smollm2_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t tokens : {1, 128})
    for (auto [n_out, n_in] : {std::pair<int64_t, int64_t>{576, 576}, {1536, 576}, {576, 1536}, {49152, 576}})
      if (!(tokens > 1 && n_out == 49152)) b->Args({n_out, n_in, tokens});
  b->ArgNames({"out", "in", "tokens"})->UseRealTime();
}

BENCHMARK(BM_MatmulF16)->Apply(smollm2_shapes);
BENCHMARK(BM_MatmulInt8)->Apply(smollm2_shapes);
// Small batches (batched decode, short prompts) around the switch from streaming to packed GEMM.
void small_batches(benchmark::internal::Benchmark* b) {
  for (int64_t tokens : {2, 4, 5, 6, 8, 16}) b->Args({1536, 576, tokens});
  b->ArgNames({"out", "in", "tokens"})->UseRealTime();
}
BENCHMARK(BM_MatmulF16)->Apply(small_batches);
BENCHMARK(BM_MatmulInt8)->Apply(small_batches);

BENCHMARK(BM_MatmulBF16)->Args({1536, 576, 1})->Args({1536, 576, 128})->UseRealTime();
BENCHMARK(BM_MatmulF32)->Args({1536, 576, 1})->Args({1536, 576, 128})->UseRealTime();

// The baseline: every thread of the pool sums its share of a footprint-sized buffer, the same split as
// a GEMV, with the widest loads the CPU has.
#if defined(__x86_64__)
__attribute__((target("avx512f"))) uint64_t sum_avx512(const unsigned char* p, int64_t bytes) {
  __m512i a = _mm512_setzero_si512(), b = a;
  for (int64_t i = 0; i < bytes; i += 128) {
    a = _mm512_add_epi64(a, _mm512_load_si512(p + i));
    b = _mm512_add_epi64(b, _mm512_load_si512(p + i + 64));
  }
  return uint64_t(_mm512_reduce_add_epi64(_mm512_add_epi64(a, b)));
}
#endif

uint64_t sum_portable(const unsigned char* p, int64_t bytes) {
  uint64_t acc[8] = {};
  const auto* words = reinterpret_cast<const uint64_t*>(p);
  for (int64_t i = 0; i < bytes / 8; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += words[i + l];
  return acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
}

void BM_StreamRead(benchmark::State& state) {
  const size_t bytes = footprint_bytes();
  Buffer buffer = aligned_buffer(bytes);
  std::memset(buffer.get(), 1, bytes);
  auto sum = sum_portable;
#if defined(__x86_64__)
  if (cpu_level_default() >= CpuLevel::Avx512) sum = sum_avx512;
#endif
  const int64_t n_blocks = int64_t(bytes / 4096);
  std::vector<uint64_t> sums(64 * 8);  // a cache line per thread
  for (auto _ : state) {
    pool().parallel_for_thread(n_blocks, [&](int64_t begin, int64_t end, int thread) {
      sums[size_t(thread) * 8] += sum(buffer.get() + begin * 4096, (end - begin) * 4096);
    });
    benchmark::DoNotOptimize(sums.data());
  }
  state.counters["GB/s"] = rate(double(bytes));
}
BENCHMARK(BM_StreamRead)->UseRealTime();

// One decode step of SmolLM2's attention (9 query heads on 3 kv heads, head_dim 64) at a context depth.
void BM_AttentionDecode(benchmark::State& state) {
  AttentionParams p;
  p.n_tokens = 1;
  p.first_position = state.range(0);
  p.n_heads = 9;
  p.n_kv_heads = 3;
  p.head_dim = 64;
  p.kv_stride = p.first_position + 1;
  p.scale = 0.125f;
  std::vector<float> q(9 * 64, 0.1f), out(9 * 64);
  std::vector<float> k(size_t(3 * p.kv_stride * 64), 0.01f), v(k.size(), 0.5f);
  for (auto _ : state) {
    attention(q.data(), k.data(), v.data(), out.data(), p, pool());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GB/s"] = rate(double(k.size() + v.size()) * 4);
}
BENCHMARK(BM_AttentionDecode)->Arg(128)->Arg(1024)->Arg(8192)->UseRealTime();

// A SmolLM2-135M forward pass made of these kernels alone (no engine): 30 layers of RMSNorm, fused QKV
// GEMM, rotary, attention, output GEMM, residual, RMSNorm, fused gate/up GEMM, SwiGLU, down GEMM,
// residual; then the LM head for the last token. Every layer has its own weights, so decode streams the
// whole model as it would. Args: tokens per call (1: decode at the given depth; 128: a prompt).
struct SmolLm2 {
  static constexpr int64_t kDim = 576, kLayers = 30, kHeads = 9, kKvHeads = 3, kHeadDim = 64, kFfn = 1536;
  static constexpr int64_t kVocab = 49152, kCtx = 512;
  std::vector<WeightCopies> qkv, o, gate_up, down;
  WeightCopies head;
  std::vector<float> norm_w, k_cache, v_cache;
  RotaryTable table;

  explicit SmolLm2(DType dtype)
      : head(dtype, kVocab, kDim, 1), table(rope(), kCtx) {
    for (int64_t l = 0; l < kLayers; ++l) {
      qkv.emplace_back(dtype, (kHeads + 2 * kKvHeads) * kHeadDim, kDim, 1);
      o.emplace_back(dtype, kDim, kHeads * kHeadDim, 1);
      gate_up.emplace_back(dtype, 2 * kFfn, kDim, 1);
      down.emplace_back(dtype, kDim, kFfn, 1);
    }
    norm_w.assign(kDim, 1.0f);
    k_cache.assign(size_t(kLayers * kKvHeads * kCtx * kHeadDim), 0.01f);
    v_cache.assign(k_cache.size(), 0.02f);
  }
  static RotaryParams rope() {
    RotaryParams p;
    p.rotary_dim = int(kHeadDim);
    p.theta = 100000.0f;
    return p;
  }

  // n tokens at positions [first, first + n); returns the logits of the last one.
  void forward(int64_t n, int64_t first, std::vector<float>& x, std::vector<float>& work, std::vector<float>& logits) {
    const int64_t q_dim = kHeads * kHeadDim, kv_dim = kKvHeads * kHeadDim, qkv_dim = q_dim + 2 * kv_dim;
    float* h = work.data();                      // [n, dim]
    float* qkv_out = h + n * kDim;               // [n, qkv_dim]
    float* q = qkv_out + n * qkv_dim;            // [n, q_dim]
    float* att = q + n * q_dim;                  // [n, q_dim]
    float* proj = att + n * q_dim;               // [n, dim]
    float* gu = proj + n * kDim;                 // [n, 2 ffn]
    float* act = gu + n * 2 * kFfn;              // [n, ffn]
    std::vector<int32_t> positions(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) positions[size_t(t)] = int32_t(first + t);
    for (int64_t l = 0; l < kLayers; ++l) {
      rms_norm(x.data(), norm_w.data(), h, n, kDim, 1e-5f);
      matmul(qkv[size_t(l)].views[0], h, qkv_out, n, pool());
      float* kc = k_cache.data() + l * kKvHeads * kCtx * kHeadDim;
      float* vc = v_cache.data() + l * kKvHeads * kCtx * kHeadDim;
      for (int64_t t = 0; t < n; ++t) {  // split q / k / v, the k and v rows into the cache
        std::memcpy(q + t * q_dim, qkv_out + t * qkv_dim, size_t(q_dim) * 4);
        for (int64_t g = 0; g < kKvHeads; ++g) {
          std::memcpy(kc + (g * kCtx + first + t) * kHeadDim, qkv_out + t * qkv_dim + q_dim + g * kHeadDim,
                      kHeadDim * 4);
          std::memcpy(vc + (g * kCtx + first + t) * kHeadDim, qkv_out + t * qkv_dim + q_dim + kv_dim + g * kHeadDim,
                      kHeadDim * 4);
        }
      }
      rotary(q, positions.data(), n, int(kHeads), int(kHeadDim), rope(), &table);
      AttentionParams p;
      p.n_tokens = n;
      p.first_position = first;
      p.n_heads = int(kHeads);
      p.n_kv_heads = int(kKvHeads);
      p.head_dim = int(kHeadDim);
      p.kv_stride = kCtx;
      p.scale = 0.125f;
      attention(q, kc, vc, att, p, pool());
      matmul(o[size_t(l)].views[0], att, proj, n, pool());
      residual_add_bias(x.data(), proj, nullptr, nullptr, nullptr, n, kDim);
      rms_norm(x.data(), norm_w.data(), h, n, kDim, 1e-5f);
      matmul(gate_up[size_t(l)].views[0], h, gu, n, pool());
      gated_activation(gu, act, n, kFfn, Activation::Silu);
      matmul(down[size_t(l)].views[0], act, proj, n, pool());
      residual_add_bias(x.data(), proj, nullptr, nullptr, nullptr, n, kDim);
    }
    rms_norm(x.data() + (n - 1) * kDim, norm_w.data(), h, 1, kDim, 1e-5f);
    matmul(head.views[0], h, logits.data(), 1, pool());
  }
};

void run_forward(benchmark::State& state, DType dtype) {
  const int64_t n = state.range(0), depth = state.range(1);
  SmolLm2 model(dtype);
  std::vector<float> x(size_t(n * SmolLm2::kDim), 0.1f), work(size_t(n * 16 * 1024)), logits(SmolLm2::kVocab);
  for (auto _ : state) {
    std::fill(x.begin(), x.end(), 0.1f);
    model.forward(n, depth, x, work, logits);
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tokens/s"] = rate(double(n));
}
void BM_SmolLm2ForwardF16(benchmark::State& state) { run_forward(state, DType::F16); }
void BM_SmolLm2ForwardInt8(benchmark::State& state) { run_forward(state, DType::I8); }
BENCHMARK(BM_SmolLm2ForwardF16)->Args({1, 64})->Args({128, 0})->ArgNames({"tokens", "depth"})->UseRealTime();
BENCHMARK(BM_SmolLm2ForwardInt8)->Args({1, 64})->Args({128, 0})->ArgNames({"tokens", "depth"})->UseRealTime();

// What the engine pays per parallel call, ~300 times a decoded token.
void BM_ParallelForOverhead(benchmark::State& state) {
  std::vector<int64_t> sink(64);
  for (auto _ : state)
    pool().parallel_for_thread(64,
                               [&](int64_t begin, int64_t end, int thread) { sink[size_t(thread)] += end - begin; });
  benchmark::DoNotOptimize(sink.data());
}
BENCHMARK(BM_ParallelForOverhead)->UseRealTime();

}  // namespace
}  // namespace kiln

BENCHMARK_MAIN();
