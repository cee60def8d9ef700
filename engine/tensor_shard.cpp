#include "engine/tensor_shard.h"

#include <cstring>
#include <numeric>
#include <tuple>
#include <utility>

#include "engine/error.h"

namespace kiln {
namespace {

bool is_gated(MlpKind mlp) { return mlp == MlpKind::SiluGated || mlp == MlpKind::GeluGated; }

// [begin, end) of part `rank` when n units are split into `size` parts as evenly as they go.
std::pair<int64_t, int64_t> even_part(int64_t n, int rank, int size) { return {n * rank / size, n * (rank + 1) / size}; }

using Range = std::pair<int64_t, int64_t>;

// Copies of parts of a matrix (and of its int8 scales) into storage the ShardedWeights owns.
class ShardCopier {
 public:
  explicit ShardCopier(std::deque<std::vector<uint8_t>>& storage) : storage_(storage) {}

  // The rows [begin, end): a view, no copy.
  static TensorView rows(const TensorView& t, Range r) {
    TensorView v = t;
    const int64_t n = r.second - r.first;
    v.dims[0] = n;
    v.bytes = uint64_t(n * t.cols()) * dtype_bytes(t.dtype);
    v.data = static_cast<const uint8_t*>(t.data) + uint64_t(r.first * t.cols()) * dtype_bytes(t.dtype);
    if (t.scales) v.scales = t.scales + r.first * (t.cols() / t.group_size);
    return v;
  }

  // The rows of every range in order, copied into one matrix.
  TensorView gather_rows(const TensorView& t, std::initializer_list<Range> ranges) {
    int64_t n = 0;
    for (const Range& r : ranges) n += r.second - r.first;
    const size_t row_bytes = size_t(t.cols()) * dtype_bytes(t.dtype);
    const int64_t groups = t.scales ? t.cols() / t.group_size : 0;
    uint8_t* data = allocate(size_t(n) * row_bytes);
    uint16_t* scales = t.scales ? reinterpret_cast<uint16_t*>(allocate(size_t(n * groups) * 2)) : nullptr;
    int64_t at = 0;
    for (const Range& r : ranges) {
      const int64_t m = r.second - r.first;
      std::memcpy(data + size_t(at) * row_bytes, static_cast<const uint8_t*>(t.data) + size_t(r.first) * row_bytes,
                  size_t(m) * row_bytes);
      if (scales) std::memcpy(scales + at * groups, t.scales + r.first * groups, size_t(m * groups) * 2);
      at += m;
    }
    return with_data(t, n, t.cols(), data, scales);
  }

  // The columns [begin, end) of every row, copied; int8 ones begin and end on group boundaries.
  TensorView columns(const TensorView& t, Range c) {
    const int64_t rows = t.rows(), cols = t.cols(), n = c.second - c.first;
    const size_t elem = dtype_bytes(t.dtype);
    uint8_t* data = allocate(size_t(rows * n) * elem);
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(data + size_t(r * n) * elem, static_cast<const uint8_t*>(t.data) + size_t(r * cols + c.first) * elem,
                  size_t(n) * elem);
    uint16_t* scales = nullptr;
    if (t.scales) {
      const int64_t g = t.group_size, groups = cols / g, kept = n / g;
      scales = reinterpret_cast<uint16_t*>(allocate(size_t(rows * kept) * 2));
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(scales + r * kept, t.scales + r * groups + c.first / g, size_t(kept) * 2);
    }
    return with_data(t, rows, n, data, scales);
  }

  // The elements of every range of an f32 vector in order; nullptr for an absent vector.
  const float* gather(const float* v, std::initializer_list<Range> ranges) {
    if (v == nullptr) return nullptr;
    int64_t n = 0;
    for (const Range& r : ranges) n += r.second - r.first;
    auto* out = reinterpret_cast<float*>(allocate(size_t(n) * sizeof(float)));
    int64_t at = 0;
    for (const Range& r : ranges) {
      std::memcpy(out + at, v + r.first, size_t(r.second - r.first) * sizeof(float));
      at += r.second - r.first;
    }
    return out;
  }

 private:
  uint8_t* allocate(size_t bytes) { return storage_.emplace_back(bytes).data(); }

  static TensorView with_data(const TensorView& t, int64_t rows, int64_t cols, const uint8_t* data,
                              const uint16_t* scales) {
    TensorView v = t;
    v.n_dims = 2;
    v.dims = {rows, cols, 1, 1};
    v.data = data;
    v.bytes = uint64_t(rows * cols) * dtype_bytes(t.dtype);
    v.scales = scales;
    return v;
  }

  std::deque<std::vector<uint8_t>>& storage_;
};

}  // namespace

TensorShard whole_model(const ModelConfig& c) {
  TensorShard s;
  s.n_heads = s.head_end = c.n_heads;
  s.kv_head_end = c.n_kv_heads;
  s.ffn_end = c.ffn_dim;
  s.n_vocab = s.vocab_end = c.n_vocab;
  return s;
}

TensorShard plan_shard(const ModelConfig& c, const Weights& w, int rank, int size) {
  KILN_CHECK(size >= 1 && rank >= 0 && rank < size, "rank {} of a tensor-parallel size {} does not exist", rank, size);
  KILN_CHECK(size <= c.n_kv_heads,
             "-tp {} needs a key/value head per rank, and this model has {} key/value heads: use at most -tp {}",
             size, c.n_kv_heads, c.n_kv_heads);
  TensorShard s = whole_model(c);
  s.rank = rank;
  s.size = size;
  std::tie(s.kv_head_begin, s.kv_head_end) = even_part(c.n_kv_heads, rank, size);
  const int64_t group = c.n_heads / c.n_kv_heads;
  s.head_begin = s.kv_head_begin * group;
  s.head_end = s.kv_head_end * group;

  // The column splits must keep whole int8 groups: attn_out's at head boundaries, ffn_down's anywhere.
  for (const LayerWeights& l : w.layers) {
    if (l.attn_out.dtype != DType::I8) continue;
    const int64_t g = l.attn_out.group_size;
    KILN_CHECK((s.head_begin * c.head_dim) % g == 0 && (s.head_end * c.head_dim) % g == 0,
               "tensor-parallel rank {} of {} would split {} inside an int8 group of {} columns (its heads start at "
               "column {}): convert with a group size that divides {}, or use another -tp",
               rank, size, l.attn_out.name, g, s.head_begin * c.head_dim, c.head_dim * group);
  }
  int64_t unit = 1;  // hidden units that stay together: every layer's ffn_down int8 group
  for (const LayerWeights& l : w.layers)
    if (l.ffn_down.dtype == DType::I8) unit = std::lcm(unit, int64_t(l.ffn_down.group_size));
  const int64_t units = c.ffn_dim / unit;
  KILN_CHECK(size <= units, "the MLP's {} hidden units in int8 groups of {} cannot be split over {} ranks", c.ffn_dim,
             unit, size);
  const auto [unit_begin, unit_end] = even_part(units, rank, size);
  s.ffn_begin = unit_begin * unit;
  s.ffn_end = unit_end * unit;
  std::tie(s.vocab_begin, s.vocab_end) = even_part(c.n_vocab, rank, size);
  return s;
}

ModelConfig shard_config(const ModelConfig& c, const TensorShard& s) {
  ModelConfig r = c;
  r.n_heads = s.head_end - s.head_begin;
  r.n_kv_heads = s.kv_head_end - s.kv_head_begin;
  r.ffn_dim = s.ffn_end - s.ffn_begin;
  r.n_vocab = s.vocab_end - s.vocab_begin;
  r.validate();
  return r;
}

ShardedWeights shard_weights(const ModelConfig& c, const Weights& w, const TensorShard& s) {
  ShardedWeights out;
  out.weights = w;
  if (s.whole()) return out;
  ShardCopier copy(out.storage);
  Weights& r = out.weights;
  const int64_t hd = c.head_dim, q_dim = c.q_dim(), kv_dim = c.kv_dim(), ffn = c.ffn_dim;
  const Range q{s.head_begin * hd, s.head_end * hd};
  const Range k{q_dim + s.kv_head_begin * hd, q_dim + s.kv_head_end * hd};
  const Range v{k.first + kv_dim, k.second + kv_dim};
  const Range hidden{s.ffn_begin, s.ffn_end};
  const Range up{ffn + s.ffn_begin, ffn + s.ffn_end};  // gated: the up rows follow the gate rows
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    LayerWeights& o = r.layers[i];
    o.attn_qkv = copy.gather_rows(l.attn_qkv, {q, k, v});
    o.attn_qkv_bias = copy.gather(l.attn_qkv_bias, {q, k, v});
    o.attn_out = copy.columns(l.attn_out, q);
    if (is_gated(c.mlp)) {
      o.ffn_up = copy.gather_rows(l.ffn_up, {hidden, up});
      o.ffn_up_bias = copy.gather(l.ffn_up_bias, {hidden, up});
    } else {
      o.ffn_up = ShardCopier::rows(l.ffn_up, hidden);
      o.ffn_up_bias = l.ffn_up_bias ? l.ffn_up_bias + s.ffn_begin : nullptr;
    }
    o.ffn_down = copy.columns(l.ffn_down, hidden);
  }
  const Range vocab{s.vocab_begin, s.vocab_end};
  r.token_embd = ShardCopier::rows(w.token_embd, vocab);
  if (c.lm_head) {
    r.output = c.tied_embeddings ? r.token_embd : ShardCopier::rows(w.output, vocab);
    if (w.output_bias) r.output_bias = w.output_bias + s.vocab_begin;
  }
  return out;
}

}  // namespace kiln
