#include "convert/synthetic.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "convert/kiln_writer.h"
#include "convert/quantize.h"
#include "engine/error.h"
#include "engine/tokenizer_metadata.h"

namespace kiln {
namespace {

// The shapes of the peers' synthetic GGUF files (same numbers), so both sides time the same work.
constexpr SyntheticShape kShapes[] = {
    // name, dim, layers, heads, kv heads, ffn, vocab, rope theta, tied
    {"smollm2-135m", 576, 30, 9, 3, 1536, 49152, 100000.0f, true},
    {"tinyllama-1.1b", 2048, 22, 32, 4, 5632, 32000, 10000.0f, false},
    {"llama2-7b", 4096, 32, 32, 32, 11008, 32000, 10000.0f, false},
    {"llama3-8b", 4096, 32, 32, 8, 14336, 128256, 500000.0f, false},
    {"llama2-70b", 8192, 80, 64, 8, 28672, 32000, 10000.0f, false},
    {"test-tiny", 64, 2, 4, 2, 192, 512, 10000.0f, false},
};

constexpr float kWeightScale = 0.02f;
constexpr int64_t kChunkValues = int64_t(1) << 16;  // values drawn per task: the stream of one seed

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// FNV-1a: a seed per tensor kind that is the same on every platform.
uint64_t name_seed(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) h = (h ^ uint8_t(c)) * 0x100000001b3ull;
  return h;
}

// out: [n] normal(0, scale) values by Box-Muller from the seed's stream.
void fill_normal(float* out, int64_t n, uint64_t seed, float scale) {
  constexpr float kTwoPi = 6.28318530717958647692f;
  for (int64_t i = 0; i < n; i += 2) {
    const float u1 = (float(splitmix64(seed) >> 40) + 1.0f) * 0x1.0p-24f;  // (0, 1]: log is finite
    const float u2 = float(splitmix64(seed) >> 40) * 0x1.0p-24f;
    const float r = scale * std::sqrt(-2.0f * std::log(u1));
    out[i] = r * std::cos(kTwoPi * u2);
    if (i + 1 < n) out[i + 1] = r * std::sin(kTwoPi * u2);
  }
}

// Runs task(i) for i in [0, n) on every core; rethrows the first error a task threw.
template <typename Task>
void parallel_tasks(int64_t n, const Task& task) {
  const int64_t n_threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, std::max<int64_t>(n, 1));
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    try {
      for (int64_t i = next++; i < n; i = next++) task(i);
    } catch (...) {
      const std::lock_guard lock(error_mutex);
      if (!error) error = std::current_exception();
      next = n;  // the others stop at their next task
    }
  };
  std::vector<std::thread> threads;
  for (int64_t t = 1; t < n_threads; ++t) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

void copy_parallel(const uint8_t* from, uint8_t* to, size_t bytes) {
  constexpr size_t kPiece = size_t(16) << 20;
  parallel_tasks(int64_t((bytes + kPiece - 1) / kPiece), [&](int64_t i) {
    const size_t begin = size_t(i) * kPiece;
    std::memcpy(to + begin, from + begin, std::min(kPiece, bytes - begin));
  });
}

// values (and scales): a [rows, cols] matrix of random weights stored as dtype. Chunks of rows are drawn
// from their own seeds, so the result does not depend on the thread count.
void fill_random_matrix(int64_t rows, int64_t cols, DType dtype, uint32_t group_size, uint64_t seed,
                        std::span<uint8_t> values, std::span<uint8_t> scales) {
  const int64_t chunk_rows = std::max<int64_t>(1, kChunkValues / cols);
  const int64_t n_chunks = (rows + chunk_rows - 1) / chunk_rows;
  const uint64_t value_bytes = dtype_bytes(dtype);
  const uint64_t row_scale_bytes = dtype == DType::I8 ? uint64_t(cols / group_size) * 2 : 0;
  parallel_tasks(n_chunks, [&](int64_t chunk) {
    thread_local std::vector<float> f32;
    const int64_t first = chunk * chunk_rows, n = std::min(chunk_rows, rows - first);
    f32.resize(size_t(n * cols));
    uint64_t chunk_seed = seed ^ (uint64_t(chunk) * 0xd1342543de82ef95ull);
    fill_normal(f32.data(), n * cols, splitmix64(chunk_seed), kWeightScale);
    quantize_rows(f32.data(), n, cols, dtype, group_size,
                  values.subspan(uint64_t(first * cols) * value_bytes, uint64_t(n * cols) * value_bytes),
                  scales.subspan(uint64_t(first) * row_scale_bytes, uint64_t(n) * row_scale_bytes));
  });
}

// "blk.12.ffn_up.weight" -> "ffn_up.weight": every layer's tensor of a kind gets the same values.
std::string tensor_kind(const std::string& name) {
  if (!name.starts_with("blk.")) return name;
  const size_t dot = name.find('.', 4);
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

}  // namespace

std::span<const SyntheticShape> synthetic_shapes() { return kShapes; }

ModelConfig synthetic_config(std::string_view name) {
  const SyntheticShape* shape = nullptr;
  std::vector<std::string_view> names;
  for (const SyntheticShape& s : kShapes) {
    names.push_back(s.name);
    if (s.name == name) shape = &s;
  }
  KILN_CHECK(shape != nullptr, "--synthetic '{}' is not a known shape: use one of {}", name, fmt::join(names, ", "));
  ModelConfig c;
  c.architecture = "llama";
  c.n_vocab = shape->n_vocab;
  c.dim = shape->dim;
  c.n_layers = shape->n_layers;
  c.n_heads = shape->n_heads;
  c.n_kv_heads = shape->n_kv_heads;
  c.head_dim = shape->dim / shape->n_heads;
  c.ffn_dim = shape->ffn_dim;
  c.n_ctx_train = 4096;
  c.norm = NormKind::Rms;
  c.norm_eps = 1e-5f;
  c.position = PositionKind::Rotary;
  c.rotary_style = RotaryStyle::EveryTwo;  // as a GGUF llama file converts
  c.rotary_dim = c.head_dim;
  c.rope_theta = shape->rope_theta;
  c.mlp = MlpKind::SiluGated;
  c.tied_embeddings = shape->tied_embeddings;
  c.validate();
  return c;
}

TokenizerData synthetic_tokenizer(int64_t n_vocab) {
  KILN_CHECK(n_vocab >= 259, "a synthetic tokenizer needs at least 259 tokens, not {}", n_vocab);
  TokenizerData d;
  d.kind = TokenizerKind::SentencePiece;
  d.tokens = {"<unk>", "<s>", "</s>"};
  d.token_types = {int32_t(TokenType::Unknown), int32_t(TokenType::Control), int32_t(TokenType::Control)};
  for (int b = 0; b < 256; ++b) {
    d.tokens.push_back(fmt::format("<0x{:02X}>", b));
    d.token_types.push_back(int32_t(TokenType::Byte));
  }
  for (int64_t i = int64_t(d.tokens.size()); i < n_vocab; ++i) {
    d.tokens.push_back(fmt::format("t{}", i));
    d.token_types.push_back(int32_t(TokenType::Normal));
  }
  d.scores.assign(d.tokens.size(), 0.0f);
  d.unk_id = 0;
  d.bos_id = 1;
  d.eos_id = 2;
  d.eos_ids = {2};
  d.add_bos = true;
  d.add_space_prefix = true;
  return d;
}

void write_synthetic(std::string_view name, const std::string& output, const ConvertOptions& options) {
  const ModelConfig config = synthetic_config(name);
  KILN_CHECK(options.weight_dtype != DType::U8, "weights cannot be stored as u8");
  KILN_CHECK(options.group_size >= 8 && options.group_size <= 4096 && options.group_size % 8 == 0,
             "--group-size {} must be a multiple of 8 in [8, 4096]", options.group_size);
  nlohmann::json provenance = {{"source", fmt::format("synthetic {}", name)},
                               {"source_format", "synthetic"},
                               {"name", fmt::format("synthetic-{}", name)},
                               {"synthetic", true},
                               {"converter", "kiln-convert 1"},
                               {"weight_dtype", dtype_name(options.weight_dtype)}};
  if (options.weight_dtype == DType::I8) provenance["group_size"] = options.group_size;
  KilnWriter writer({{"model", model_config_to_json(config)},
                     {"tokenizer", tokenizer_to_json(synthetic_tokenizer(config.n_vocab))},
                     {"provenance", provenance}});
  writer.set_flags(kKilnFlagSynthetic);

  std::map<std::string, std::vector<uint8_t>> blocks;  // tensor kind -> its values, then scales
  for (const auto& [tensor, dims] : expected_tensors(config)) {
    const bool matrix = dims.size() == 2;
    DType dtype = matrix ? options.weight_dtype : DType::F32;
    if (dtype == DType::I8 && dims.back() % options.group_size != 0) dtype = DType::F16;  // as convert does
    const TensorSpec spec{tensor, dtype, dims, dtype == DType::I8 ? options.group_size : 0u};
    const std::string kind = tensor_kind(tensor);
    const bool reused = kind != tensor;
    writer.add(spec, [&blocks, kind, reused, spec](std::span<uint8_t> values, std::span<uint8_t> scales) {
      if (auto it = blocks.find(kind); it != blocks.end()) {
        copy_parallel(it->second.data(), values.data(), values.size());
        copy_parallel(it->second.data() + values.size(), scales.data(), scales.size());
        return;
      }
      if (spec.dims.size() == 2) {
        fill_random_matrix(spec.dims[0], spec.dims[1], spec.dtype, spec.group_size, name_seed(kind), values, scales);
      } else {  // norm weights
        const float one = 1.0f;
        for (size_t i = 0; i < values.size(); i += sizeof one) std::memcpy(values.data() + i, &one, sizeof one);
      }
      if (!reused) return;  // the embeddings and the head are drawn once
      std::vector<uint8_t>& block = blocks[kind];
      block.assign(values.begin(), values.end());
      block.insert(block.end(), scales.begin(), scales.end());
    });
  }
  writer.write(output, options.overwrite);
}

}  // namespace kiln
