// The decode GEMV's speed on Llama-2-7B and SmolLM2-135M shapes, for f16, bf16 and int8 (groups of 64
// and 128), against the device-to-device copy bandwidth measured in the same run.
//
// Each figure is one GEMV's time inside a CUDA graph of back-to-back GEMVs (as the decode step replays
// them), over enough copies of the weight that they do not fit the L2 cache: every GEMV streams its
// weight from device memory. GB/s counts the weight's bytes (int8: and its scales) per GEMV.
//
//   bench_cuda_matmul [--tokens 1,8] [--extras 0|1] [--gemm 64,256]
// --extras: the fused input norm and the epilogues against the separate launches they replace.
// --gemm: f16 only, cuBLAS calls of those row counts (x rounded to f16 first): the batch backend's matmuls.
//   --tokens 0 leaves the GEMV table out.
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/bandwidth.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/event_timer.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/residual.h"

namespace kiln {
namespace {

constexpr size_t kArenaBytes = size_t(1) << 30;
constexpr size_t kStreamBytes = size_t(256) << 20;  // weights cycled through per graph: 4x the L2
constexpr int64_t kMaxCopies = 512;
constexpr int64_t kMaxTokens = 256;

struct Shape {
  const char* name;
  int64_t n_in, n_out;
};

const Shape kShapes[] = {{"7B qkv", 4096, 12288},     {"7B attn_out", 4096, 4096}, {"7B gate_up", 4096, 22016},
                         {"7B down", 11008, 4096},    {"7B head", 4096, 32000},    {"S qkv", 576, 960},
                         {"S attn_out", 576, 576},    {"S gate_up", 576, 3072},    {"S down", 1536, 576},
                         {"S head", 576, 49152}};

struct Dtype {
  const char* name;
  DType dtype;
  int64_t group;
};
const Dtype kDtypes[] = {{"f16", DType::F16, 0}, {"bf16", DType::BF16, 0}, {"i8g64", DType::I8, 64},
                         {"i8g128", DType::I8, 128}};

std::vector<int> parse_list(const char* text) {
  std::vector<int> out;
  for (const char* p = text; *p != '\0';) {
    out.push_back(std::atoi(p));
    while (*p != '\0' && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return out;
}

// Device buffers shared by every case: the weight copies (the arena, filled with a finite byte pattern
// for every dtype), x, y, a residual and the norm's parameters.
struct Buffers {
  cuda::DeviceBuffer arena{kArenaBytes};
  cuda::DeviceBuffer x{kMaxTokens * 16384 * sizeof(float)};
  cuda::DeviceBuffer y{kMaxTokens * 65536 * sizeof(float)};
  cuda::DeviceBuffer gate_up{kMaxTokens * 65536 * sizeof(float)};
  cuda::DeviceBuffer residual{kMaxTokens * 65536 * sizeof(float)};
  cuda::DeviceBuffer norm_weight{16384 * sizeof(float)};
  cuda::DeviceBuffer norm_out{kMaxTokens * 16384 * sizeof(float)};
  Buffers() {
    // 0x3c in every byte: f16 1.06, bf16 and f32 0.0115, int8 60, fp16 scales 1.06.
    KILN_CUDA_CHECK(cudaMemset(arena.data(), 0x3c, arena.bytes()));
    std::vector<float> host(kMaxTokens * 16384);
    for (size_t i = 0; i < host.size(); ++i) host[i] = float(int(i * 2654435761u % 2001) - 1000) / 1000.0f;
    KILN_CUDA_CHECK(cudaMemcpy(x.data(), host.data(), x.bytes(), cudaMemcpyHostToDevice));
    KILN_CUDA_CHECK(cudaMemcpy(norm_weight.data(), host.data(), norm_weight.bytes(), cudaMemcpyHostToDevice));
    KILN_CUDA_CHECK(cudaMemset(residual.data(), 0, residual.bytes()));
  }
};

struct Weights {
  std::vector<cuda::DeviceMatrix> copies;
  size_t bytes = 0;  // of one copy, scales included
};

Weights weights_for(const Buffers& b, const Shape& s, const Dtype& d) {
  const size_t data = size_t(s.n_out * s.n_in) * dtype_bytes(d.dtype);
  const size_t scales = d.group > 0 ? size_t(s.n_out * (s.n_in / d.group)) * 2 : 0;
  const size_t stride = (data + scales + 255) / 256 * 256;
  Weights w;
  w.bytes = data + scales;
  const int64_t fit = int64_t(kArenaBytes / stride);
  const int64_t want = std::max<int64_t>(2, int64_t((kStreamBytes + stride - 1) / stride));
  const int64_t n = std::min({fit, want, kMaxCopies});
  for (int64_t i = 0; i < n; ++i) {
    cuda::DeviceMatrix m;
    m.dtype = d.dtype;
    m.rows = s.n_out;
    m.cols = s.n_in;
    m.data = b.arena.as<char>() + size_t(i) * stride;
    if (d.group > 0) {
      m.scales = reinterpret_cast<const uint16_t*>(b.arena.as<char>() + size_t(i) * stride + data);
      m.group_size = d.group;
    }
    w.copies.push_back(m);
  }
  return w;
}

// Microseconds per step: `step(i)` launches step i (cycling the weight copies); a graph of at least 20
// and at least one step per copy is replayed until 2 ms have passed, after one warm-up replay.
template <typename Step>
double time_steps(cudaStream_t stream, int64_t n_copies, Step&& step) {
  const int64_t n_steps = std::max<int64_t>(20, n_copies);
  cuda::CudaGraph graph;
  graph.capture(stream, [&] {
    for (int64_t i = 0; i < n_steps; ++i) step(i % n_copies);
  });
  graph.launch(stream);
  cuda::EventTimer timer;
  double total_ms = 0;
  int64_t replays = 0;
  while (total_ms < 2.0 || replays < 3) {
    timer.start(stream);
    graph.launch(stream);
    timer.mark(stream);
    total_ms += double(timer.elapsed_ms().at(0));
    ++replays;
  }
  return total_ms * 1e3 / double(replays * n_steps);
}

cuda::MatmulArgs args_for(const Buffers& b, const cuda::DeviceMatrix& w, int64_t n_tokens, cudaStream_t stream) {
  cuda::MatmulArgs a;
  a.weight = w;
  a.x = b.x.as<float>();
  a.y = b.y.as<float>();
  a.n_tokens = n_tokens;
  a.stream = stream;
  return a;
}

void bench_shapes(const Buffers& b, cudaStream_t stream, const std::vector<int>& tokens, double copy_gbs) {
  std::string head = fmt::format("{:<12} {:>5} {:>5} {:>6} {:>8}", "shape", "n_in", "n_out", "dtype", "MB");
  for (int t : tokens) head += fmt::format(" | {:>2} tok: {:>7} {:>5} {:>4}", t, "us", "GB/s", "%");
  fmt::print("{}\n", head);
  for (const Shape& s : kShapes)
    for (const Dtype& d : kDtypes) {
      if (d.group > 0 && s.n_in % d.group != 0) continue;  // SmolLM2's 576 inputs: groups of 64 only
      const Weights w = weights_for(b, s, d);
      std::string line =
          fmt::format("{:<12} {:>5} {:>5} {:>6} {:>8.2f}", s.name, s.n_in, s.n_out, d.name, double(w.bytes) / 1e6);
      for (int n_tokens : tokens) {
        const double us = time_steps(stream, int64_t(w.copies.size()), [&](int64_t i) {
          cuda::matmul(args_for(b, w.copies[size_t(i)], n_tokens, stream));
        });
        const double gbs = double(w.bytes) / us / 1e3;
        line += fmt::format(" | {:>2} tok: {:>7.2f} {:>5.0f} {:>3.0f}%", n_tokens, us, gbs, 100 * gbs / copy_gbs);
      }
      fmt::print("{}\n", line);
      std::fflush(stdout);
    }
}

// The epilogues and the fused norm against the separate launches they replace (default GEMV, 1 token).
void bench_fusions(const Buffers& b, cudaStream_t stream) {
  fmt::print("\n{:<12} {:>6} {:<28} {:>9} {:>9}\n", "shape", "dtype", "what", "fused us", "apart us");
  for (const Shape& s : kShapes) {
    if (std::strstr(s.name, "head") != nullptr) continue;
    for (const Dtype& d : {kDtypes[0], kDtypes[2]}) {
      const Weights w = weights_for(b, s, d);
      const auto n = int64_t(w.copies.size());
      const bool gate_up = std::strstr(s.name, "gate_up") != nullptr;
      const bool residual = std::strstr(s.name, "attn_out") != nullptr || std::strstr(s.name, "down") != nullptr;
      const char* what = gate_up ? "gated SiLU" : residual ? "residual in place" : "RMSNorm input";
      const double fused = time_steps(stream, n, [&](int64_t i) {
        cuda::MatmulArgs a = args_for(b, w.copies[size_t(i)], 1, stream);
        if (gate_up) a.gated.enabled = true;
        else if (residual) a.residual = a.y = b.residual.as<float>();
        else a.norm = {true, NormKind::Rms, b.norm_weight.as<float>(), nullptr, 1e-5f, b.norm_out.as<float>()};
        cuda::matmul(a);
      });
      const double apart = time_steps(stream, n, [&](int64_t i) {
        cuda::MatmulArgs a = args_for(b, w.copies[size_t(i)], 1, stream);
        if (gate_up) {
          a.y = b.gate_up.as<float>();
          cuda::matmul(a);
          cuda::GatedActivationArgs g;
          g.gate_up = b.gate_up.as<float>();
          g.out = b.y.as<float>();
          g.n_tokens = 1;
          g.ffn = s.n_out / 2;
          g.stream = stream;
          cuda::gated_activation(g);
        } else if (residual) {
          cuda::matmul(a);
          cuda::ResidualArgs r;
          r.residual = b.residual.as<float>();
          r.a = b.y.as<float>();
          r.n_tokens = 1;
          r.dim = s.n_out;
          r.stream = stream;
          cuda::residual_add_bias(r);
        } else {
          cuda::NormArgs nrm;
          nrm.x = b.x.as<float>();
          nrm.weight = b.norm_weight.as<float>();
          nrm.y = b.norm_out.as<float>();
          nrm.n_tokens = 1;
          nrm.dim = s.n_in;
          nrm.stream = stream;
          cuda::norm(nrm);
          a.x = b.norm_out.as<float>();
          cuda::matmul(a);
        }
      });
      fmt::print("{:<12} {:>6} {:<28} {:>9.2f} {:>9.2f}\n", s.name, d.name, what, fused, apart);
    }
  }
}

// The batch backend's matmuls: f16 weights, cuBLAS calls of `rows` rows.
void bench_gemm(const Buffers& b, cudaStream_t stream, const std::vector<int>& rows, double copy_gbs) {
  int64_t max_in = 0;
  for (const Shape& s : kShapes) max_in = std::max(max_in, s.n_in);
  cuda::DeviceBuffer space(cuda::gemm_workspace_bytes(kMaxTokens, max_in, 0));
  cuda::GemmContext gemm(space.data(), space.bytes(), kMaxTokens, max_in, 0);
  std::string head = fmt::format("\n{:<12} {:>5} {:>5} {:>8}", "GEMM (f16)", "n_in", "n_out", "MB");
  for (int r : rows) head += fmt::format(" | {:>3} rows: {:>7} {:>5} {:>4}", r, "us", "GB/s", "%");
  fmt::print("{}\n", head);
  for (const Shape& s : kShapes) {
    const Weights w = weights_for(b, s, kDtypes[0]);
    std::string line = fmt::format("{:<12} {:>5} {:>5} {:>8.2f}", s.name, s.n_in, s.n_out, double(w.bytes) / 1e6);
    for (int r : rows) {
      const double us = time_steps(stream, int64_t(w.copies.size()), [&](int64_t i) {
        cuda::MatmulArgs a = args_for(b, w.copies[size_t(i)], r, stream);
        a.gemm = &gemm;
        cuda::matmul(a);
      });
      const double gbs = double(w.bytes) / us / 1e3;
      line += fmt::format(" | {:>3} rows: {:>7.2f} {:>5.0f} {:>3.0f}%", r, us, gbs, 100 * gbs / copy_gbs);
    }
    fmt::print("{}\n", line);
    std::fflush(stdout);
  }
}

int run(int argc, char** argv) {
  std::vector<int> tokens = {1, 8}, gemm_rows;
  bool extras = true;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--tokens") == 0) tokens = parse_list(argv[i + 1]);
    else if (std::strcmp(argv[i], "--extras") == 0) extras = std::atoi(argv[i + 1]) != 0;
    else if (std::strcmp(argv[i], "--gemm") == 0) gemm_rows = parse_list(argv[i + 1]);
    else fail("unknown option {}: use --tokens LIST, --extras 0|1, --gemm LIST", argv[i]);
  }
  for (int t : tokens)
    KILN_CHECK(t >= 0 && t <= cuda::kGemvMaxTokens, "--tokens takes 1 to {} (0: none), not {}", cuda::kGemvMaxTokens, t);
  for (int r : gemm_rows)
    KILN_CHECK(r > cuda::kGemvMaxTokens && r <= kMaxTokens, "--gemm takes {} to {} rows, not {}",
               cuda::kGemvMaxTokens + 1, kMaxTokens, r);
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double copy_gbs = cuda::copy_bandwidth_gbs();
  fmt::print("{}, {} SMs, L2 {} MB; device-to-device copy {:.0f} GB/s (read + write)\n", prop.name,
             prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_gbs);
  Buffers buffers;
  KILN_CUDA_CHECK(cudaDeviceSynchronize());  // the buffers' memsets ran on the legacy stream, which ours skips
  cuda::CudaStream stream;
  tokens.erase(std::remove(tokens.begin(), tokens.end(), 0), tokens.end());
  if (!tokens.empty()) bench_shapes(buffers, stream.get(), tokens, copy_gbs);
  if (extras) bench_fusions(buffers, stream.get());
  if (!gemm_rows.empty()) bench_gemm(buffers, stream.get(), gemm_rows, copy_gbs);
  return 0;
}

}  // namespace
}  // namespace kiln

int main(int argc, char** argv) {
  try {
    return kiln::run(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_cuda_matmul: {}\n", e.what());
    return 1;
  }
}
