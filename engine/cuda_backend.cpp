#include "engine/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <vector>

#include "engine/alibi.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "engine/weights.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/event_timer.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/residual.h"
#include "kernels/cuda/rotary.h"

namespace kiln {
namespace {

using cuda::DeviceMatrix;

bool is_gated(MlpKind mlp) { return mlp == MlpKind::SiluGated || mlp == MlpKind::GeluGated; }

cuda::Activation activation_of(MlpKind mlp) {
  switch (mlp) {
    case MlpKind::SiluGated: return cuda::Activation::Silu;
    case MlpKind::GeluGated: return cuda::Activation::Gelu;
    case MlpKind::Gelu: return cuda::Activation::Gelu;
    case MlpKind::GeluTanh: return cuda::Activation::GeluTanh;
    case MlpKind::Relu: return cuda::Activation::Relu;
  }
  return cuda::Activation::Silu;
}

std::string mib(uint64_t bytes) { return fmt::format("{:.1f} MiB", double(bytes) / (1 << 20)); }

struct DeviceLayer {
  const float* attn_norm = nullptr;       // [dim]
  const float* attn_norm_bias = nullptr;  // [dim] or nullptr
  DeviceMatrix attn_qkv;                  // [q_dim + 2 * kv_dim, dim]
  const float* attn_qkv_bias = nullptr;   // [q_dim + 2 * kv_dim] or nullptr
  DeviceMatrix attn_out;                  // [dim, q_dim]
  const float* attn_out_bias = nullptr;   // [dim] or nullptr
  const float* ffn_norm = nullptr;        // [dim] or nullptr (shared_layer_norm)
  const float* ffn_norm_bias = nullptr;   // [dim] or nullptr
  DeviceMatrix ffn_up;                    // [2 * ffn_dim or ffn_dim, dim]
  const float* ffn_up_bias = nullptr;     // [rows of ffn_up] or nullptr
  DeviceMatrix ffn_down;                  // [dim, ffn_dim]
  const float* ffn_down_bias = nullptr;   // [dim] or nullptr
};

// Device copies of Weights, in one allocation. A tensor bound twice (tied embeddings) is copied once.
struct DeviceWeights {
  cuda::DeviceBuffer storage;
  DeviceMatrix token_embd, token_embd_proj, pos_embd, token_type_embd, output_proj, output;
  const float* token_embd_norm = nullptr;
  const float* token_embd_norm_bias = nullptr;
  std::vector<DeviceLayer> layers;
  const float* output_norm = nullptr;
  const float* output_norm_bias = nullptr;
  const float* output_bias = nullptr;
  const float* alibi_slopes = nullptr;  // [n_heads] or nullptr
};

// Plans the copies (offsets and sizes) first, so the memory check can run before anything is allocated.
class WeightUploader {
 public:
  void vector(const float* host, int64_t n, const float** slot) {
    if (host == nullptr) return;
    add(host, size_t(n) * sizeof(float), [slot](const void* d) { *slot = static_cast<const float*>(d); });
  }
  void matrix(const TensorView& view, DeviceMatrix* slot) {
    if (view.data == nullptr) return;
    slot->dtype = view.dtype;
    slot->rows = view.rows();
    slot->cols = view.cols();
    slot->group_size = view.group_size;
    add(view.data, size_t(view.numel()) * dtype_bytes(view.dtype), [slot](const void* d) { slot->data = d; });
    if (view.dtype == DType::I8) {
      const size_t scale_bytes = size_t(view.rows()) * size_t(view.cols() / view.group_size) * sizeof(uint16_t);
      add(view.scales, scale_bytes, [slot](const void* d) { slot->scales = static_cast<const uint16_t*>(d); });
    }
  }
  uint64_t bytes() const { return total_; }
  cuda::DeviceBuffer upload() {
    cuda::DeviceBuffer buffer(total_);
    char* base = buffer.as<char>();
    for (const Entry& e : entries_) {
      if (e.copy) KILN_CUDA_CHECK(cudaMemcpy(base + e.offset, e.host, e.bytes, cudaMemcpyHostToDevice));
      e.set(base + e.offset);
    }
    return buffer;
  }

 private:
  struct Entry {
    const void* host;
    size_t bytes, offset;
    bool copy;
    std::function<void(const void*)> set;
  };
  void add(const void* host, size_t bytes, std::function<void(const void*)> set) {
    auto [it, fresh] = offsets_.try_emplace(host, total_);
    entries_.push_back({host, bytes, it->second, fresh, std::move(set)});
    if (fresh) total_ += (bytes + 255) / 256 * 256;
  }
  std::vector<Entry> entries_;
  std::map<const void*, size_t> offsets_;
  size_t total_ = 0;
};

// Every activation buffer, carved from one device allocation.
struct DeviceWorkspace {
  cuda::DeviceBuffer storage;
  float *x, *xn, *qkv, *q, *k, *att, *attn_proj, *up, *act, *ffn_out, *embd, *logits, *partial;
  int32_t* inputs;  // [max_tokens] tokens, then the first position
  void* gemm;
  size_t gemm_bytes;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const ModelConfig& config, const Weights& weights, const BackendOptions& options,
              const CudaOptions& cuda);

  const ModelConfig& config() const override { return config_; }
  int64_t n_ctx() const override { return n_ctx_; }
  std::string_view name() const override { return "CUDA"; }
  int64_t n_past() const override { return n_past_; }
  void forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
               bool all_logits) override;
  void reset() override { n_past_ = 0; }
  CudaMemoryUse memory_use() const { return {w_.storage.bytes(), kv_.bytes(), ws_.storage.bytes()}; }

 private:
  void forward_chunk(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                     bool all_logits);
  void run(int64_t n_tokens, bool want_logits, bool all_logits);  // launches only: graph-capturable
  void embed(int64_t n_tokens);
  void layer_forward(int64_t layer, int64_t n_tokens);
  void norm(const float* x, const float* weight, const float* bias, float* y, int64_t n_tokens);
  cuda::InputNorm input_norm(const float* weight, const float* bias) const;
  void matmul(const DeviceMatrix& w, const float* x, float* y, const float* bias, int64_t n_tokens,
              const cuda::InputNorm& norm = {});
  float* k_layer(int64_t layer) const { return kv_.as<float>() + layer * layer_floats_; }
  float* v_layer(int64_t layer) const { return kv_.as<float>() + (config_.n_layers + layer) * layer_floats_; }
  void emit(const char* name, int64_t layer, const float* device_data, int64_t n);
  void report_stage_times();

  ModelConfig config_;
  CudaOptions cuda_;
  int device_;
  int n_multiprocessors_;
  int64_t max_tokens_, n_ctx_, layer_floats_;
  TensorCallback on_tensor_;
  std::shared_ptr<StageTimer> stage_timer_;
  bool timing_ = false;  // this step marks its stage ends on stage_events_
  cuda::EventTimer stage_events_;
  std::vector<std::pair<const char*, int>> stage_names_;  // [marks] each mark's stage and layer
  cuda::CudaStream stream_;
  DeviceWeights w_;
  cuda::DeviceBuffer kv_;  // k: [n_layers, n_kv_heads, n_ctx, head_dim], then v likewise
  DeviceWorkspace ws_;
  std::unique_ptr<cuda::GemmContext> gemm_;
  cuda::PinnedBuffer staging_;  // [max_tokens + 1] int32: what ws_.inputs receives
  cuda::CudaGraph decode_graph_;
  std::vector<float> host_copy_;  // on_tensor only
  int64_t n_past_ = 0;
};

int select_device(int device) {
  KILN_CHECK(cuda::device_available(), "no CUDA GPU is available: use --device cpu");
  int count = 0;
  KILN_CUDA_CHECK(cudaGetDeviceCount(&count));
  KILN_CHECK(device >= 0 && device < count, "CUDA device {} does not exist ({} present)", device, count);
  KILN_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

CudaBackend::CudaBackend(const ModelConfig& config, const Weights& weights, const BackendOptions& options,
                         const CudaOptions& cuda)
    : config_(config),
      cuda_(cuda),
      device_(select_device(cuda.device)),
      n_multiprocessors_(cuda::multiprocessor_count()),
      max_tokens_(options.max_batch),
      n_ctx_(context_size(config, weights, options.n_ctx)),
      layer_floats_(config.n_kv_heads * n_ctx_ * config.head_dim),
      on_tensor_(options.on_tensor),
      stage_timer_(options.stage_timer) {
  const ModelConfig& c = config_;
  KILN_CHECK(int64_t(weights.layers.size()) == c.n_layers, "the weights hold {} layers, the config {}",
             weights.layers.size(), c.n_layers);
  KILN_CHECK(max_tokens_ >= 1 && max_tokens_ <= 65536, "the batch size {} is outside [1, 65536]", max_tokens_);
  KILN_CHECK(c.head_dim <= cuda::kAttentionMaxHeadDim, "head_dim {} is larger than the CUDA attention's {}",
             c.head_dim, cuda::kAttentionMaxHeadDim);

  // Plan the weights, KV cache and workspace, and check they fit before allocating any of them.
  WeightUploader up;
  up.matrix(weights.token_embd, &w_.token_embd);
  up.matrix(weights.token_embd_proj, &w_.token_embd_proj);
  up.matrix(weights.pos_embd, &w_.pos_embd);
  up.matrix(weights.token_type_embd, &w_.token_type_embd);
  up.vector(weights.token_embd_norm, c.dim, &w_.token_embd_norm);
  up.vector(weights.token_embd_norm_bias, c.dim, &w_.token_embd_norm_bias);
  w_.layers.resize(size_t(c.n_layers));
  const int64_t up_rows = is_gated(c.mlp) ? 2 * c.ffn_dim : c.ffn_dim;
  int64_t max_int8 = 0;
  for (size_t i = 0; i < w_.layers.size(); ++i) {
    const LayerWeights& h = weights.layers[i];
    DeviceLayer& d = w_.layers[i];
    up.vector(h.attn_norm, c.dim, &d.attn_norm);
    up.vector(h.attn_norm_bias, c.dim, &d.attn_norm_bias);
    up.matrix(h.attn_qkv, &d.attn_qkv);
    up.vector(h.attn_qkv_bias, c.qkv_dim(), &d.attn_qkv_bias);
    up.matrix(h.attn_out, &d.attn_out);
    up.vector(h.attn_out_bias, c.dim, &d.attn_out_bias);
    up.vector(h.ffn_norm, c.dim, &d.ffn_norm);
    up.vector(h.ffn_norm_bias, c.dim, &d.ffn_norm_bias);
    up.matrix(h.ffn_up, &d.ffn_up);
    up.vector(h.ffn_up_bias, up_rows, &d.ffn_up_bias);
    up.matrix(h.ffn_down, &d.ffn_down);
    up.vector(h.ffn_down_bias, c.dim, &d.ffn_down_bias);
    for (const TensorView* m : {&h.attn_qkv, &h.attn_out, &h.ffn_up, &h.ffn_down})
      if (m->dtype == DType::I8) max_int8 = std::max(max_int8, m->numel());
  }
  up.vector(weights.output_norm, c.dim, &w_.output_norm);
  up.vector(weights.output_norm_bias, c.dim, &w_.output_norm_bias);
  up.matrix(weights.output_proj, &w_.output_proj);
  up.matrix(weights.output, &w_.output);
  up.vector(weights.output_bias, c.n_vocab, &w_.output_bias);
  for (const TensorView* m : {&weights.output, &weights.output_proj, &weights.token_embd_proj})
    if (m->data != nullptr && m->dtype == DType::I8) max_int8 = std::max(max_int8, m->numel());
  std::vector<float> slopes;
  if (c.position == PositionKind::Alibi) {
    slopes = alibi_slopes(int(c.n_heads));
    up.vector(slopes.data(), c.n_heads, &w_.alibi_slopes);
  }

  const uint64_t kv_bytes = 2 * uint64_t(c.n_layers) * uint64_t(layer_floats_) * sizeof(float);
  KILN_CHECK(kv_bytes <= options.max_kv_bytes,
             "a KV cache for {} positions needs {:.1f} GiB, more than the {:.1f} GiB allowed: use a smaller context size",
             n_ctx_, double(kv_bytes) / (1u << 30), double(options.max_kv_bytes) / (1u << 30));

  // Workspace layout: f32 activations for max_tokens tokens, attention partials, inputs, GEMM space.
  const auto T = size_t(max_tokens_);
  size_t partial_floats = 0;
  for (int64_t n = 1; n <= max_tokens_; ++n) {
    const int splits = cuda::attention_splits(n, int(c.n_heads), int(c.n_kv_heads), int(c.head_dim), n_ctx_,
                                              n_multiprocessors_);
    partial_floats = std::max(partial_floats, cuda::attention_partial_floats(splits, n, int(c.n_heads), int(c.head_dim)));
  }
  const int64_t max_n_in = std::max({c.dim, c.q_dim(), c.ffn_dim, c.embd_dim()});
  const size_t gemm_bytes = max_tokens_ > cuda::kGemvMaxTokens ? cuda::gemm_workspace_bytes(max_tokens_, max_n_in, max_int8) : 0;
  const size_t floats[] = {T * size_t(c.dim),      T * size_t(c.dim),    T * size_t(c.qkv_dim()), T * size_t(c.q_dim()),
                           T * size_t(c.kv_dim()), T * size_t(c.q_dim()), T * size_t(c.dim),       T * size_t(up_rows),
                           T * size_t(c.ffn_dim),  T * size_t(c.dim),    T * size_t(c.projects_embedding() ? c.embd_dim() : 0),
                           T * size_t(c.output_width()), partial_floats};
  float** slots[] = {&ws_.x,   &ws_.xn,  &ws_.qkv, &ws_.q,       &ws_.k,    &ws_.att,    &ws_.attn_proj,
                     &ws_.up,  &ws_.act, &ws_.ffn_out, &ws_.embd, &ws_.logits, &ws_.partial};
  size_t ws_bytes = 0;
  std::vector<size_t> offsets;
  for (size_t n : floats) {
    offsets.push_back(ws_bytes);
    ws_bytes += (n * sizeof(float) + 255) / 256 * 256;
  }
  const size_t inputs_offset = ws_bytes;
  ws_bytes += ((T + 1) * sizeof(int32_t) + 255) / 256 * 256;
  const size_t gemm_offset = ws_bytes;
  ws_bytes += gemm_bytes;

  size_t free_bytes = 0, total_bytes = 0;
  KILN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const uint64_t needed = up.bytes() + kv_bytes + ws_bytes;
  KILN_CHECK(needed <= free_bytes,
             "the model needs {} of GPU memory ({} weights, {} KV cache for {} positions, {} workspace for {} tokens "
             "a step) but GPU {} has {} free of {}: use a smaller context (-c) or --device cpu",
             mib(needed), mib(up.bytes()), mib(kv_bytes), n_ctx_, mib(ws_bytes), max_tokens_, device_, mib(free_bytes),
             mib(total_bytes));

  w_.storage = up.upload();
  kv_ = cuda::DeviceBuffer(kv_bytes);
  KILN_CUDA_CHECK(cudaMemset(kv_.data(), 0, kv_bytes));
  ws_.storage = cuda::DeviceBuffer(ws_bytes);
  char* base = ws_.storage.as<char>();
  for (size_t i = 0; i < std::size(slots); ++i) *slots[i] = reinterpret_cast<float*>(base + offsets[i]);
  ws_.inputs = reinterpret_cast<int32_t*>(base + inputs_offset);
  ws_.gemm = base + gemm_offset;
  ws_.gemm_bytes = gemm_bytes;
  if (gemm_bytes > 0) gemm_ = std::make_unique<cuda::GemmContext>(ws_.gemm, gemm_bytes, max_tokens_, max_n_in, max_int8);
  staging_ = cuda::PinnedBuffer((T + 1) * sizeof(int32_t));
}

void CudaBackend::forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                          bool all_logits) {
  KILN_CHECK(tokens != nullptr && n_tokens >= 1, "forward needs at least one token");
  KILN_CHECK(first_position >= 0 && first_position <= n_past_,
             "forward at position {} would leave a gap: the cache holds {} positions", first_position, n_past_);
  KILN_CHECK(n_tokens <= n_ctx_ - first_position,
             "{} tokens at position {} do not fit the context of {} positions: start a new conversation or use a "
             "larger context size",
             n_tokens, first_position, n_ctx_);
  KILN_CHECK(config_.causal || (first_position == 0 && n_tokens <= max_tokens_),
             "this {} model attends both ways: run the whole input (at most {} tokens) in one call",
             config_.architecture, max_tokens_);
  for (int64_t i = 0; i < n_tokens; ++i)
    KILN_CHECK(tokens[i] >= 0 && tokens[i] < config_.n_vocab, "token {} at index {} is outside the vocabulary of {}",
               tokens[i], i, config_.n_vocab);
  KILN_CUDA_CHECK(cudaSetDevice(device_));

  n_past_ = first_position;
  for (int64_t start = 0; start < n_tokens; start += max_tokens_) {
    const int64_t n = std::min(max_tokens_, n_tokens - start);
    const bool last = start + n == n_tokens;
    float* out = logits == nullptr ? nullptr
                 : all_logits      ? logits + start * config_.output_width()
                 : last            ? logits
                                   : nullptr;
    forward_chunk(tokens + start, n, first_position + start, out, all_logits);
    n_past_ = first_position + start + n;
  }
}

void CudaBackend::forward_chunk(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                                bool all_logits) {
  cudaStream_t s = stream_.get();
  int32_t* staged = staging_.as<int32_t>();
  std::copy(tokens, tokens + n_tokens, staged);
  staged[max_tokens_] = int32_t(first_position);
  KILN_CUDA_CHECK(cudaMemcpyAsync(ws_.inputs, staged, size_t(n_tokens) * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  KILN_CUDA_CHECK(cudaMemcpyAsync(ws_.inputs + max_tokens_, staged + max_tokens_, sizeof(int32_t),
                                  cudaMemcpyHostToDevice, s));
  const bool want_logits = logits != nullptr;
  timing_ = stage_timer_ && stage_timer_->enabled;
  if (n_tokens == 1 && want_logits && cuda_.use_graph && !on_tensor_ && !timing_) {
    if (!decode_graph_.captured()) decode_graph_.capture(s, [&] { run(1, true, false); });
    decode_graph_.launch(s);
  } else {
    if (timing_) {
      stage_names_.clear();
      stage_events_.start(s);
    }
    run(n_tokens, want_logits, all_logits);
  }
  if (want_logits) {
    const int64_t rows = all_logits ? n_tokens : 1;
    KILN_CUDA_CHECK(cudaMemcpyAsync(logits, ws_.logits, size_t(rows * config_.output_width()) * sizeof(float),
                                    cudaMemcpyDeviceToHost, s));
  }
  stream_.synchronize();  // the staging buffer is reused by the next chunk
  if (timing_) report_stage_times();
}

void CudaBackend::report_stage_times() {
  timing_ = false;
  const std::vector<float> ms = stage_events_.elapsed_ms();
  for (size_t i = 0; i < ms.size() && i < stage_names_.size(); ++i)
    stage_timer_->on_stage(stage_names_[i].first, stage_names_[i].second, double(ms[i]) * 1e3);
}

void CudaBackend::run(int64_t n_tokens, bool want_logits, bool all_logits) {
  const int64_t dim = config_.dim;
  embed(n_tokens);
  for (int64_t layer = 0; layer < config_.n_layers; ++layer) layer_forward(layer, n_tokens);
  if (!want_logits) return;  // prefill: the cache is filled

  // output norm + LM head (an encoder returns the hidden states; the norm is fused into the GEMV input
  // for a decode step)
  const int64_t rows = all_logits ? n_tokens : 1;
  const float* last = ws_.x + (n_tokens - rows) * dim;
  const bool fuse = config_.final_norm && config_.lm_head && !config_.projects_embedding();
  const float* hidden = last;
  if (config_.final_norm && !fuse) {
    norm(last, w_.output_norm, w_.output_norm_bias, ws_.xn, rows);
    hidden = ws_.xn;
  }
  if (!config_.lm_head) {
    emit("result_norm", -1, hidden, rows * dim);
    KILN_CUDA_CHECK(cudaMemcpyAsync(ws_.logits, hidden, size_t(rows * dim) * sizeof(float), cudaMemcpyDeviceToDevice,
                                    stream_.get()));
    return;
  }
  if (config_.projects_embedding()) {
    emit("result_norm", -1, hidden, rows * dim);
    matmul(w_.output_proj, hidden, ws_.embd, nullptr, rows);
    hidden = ws_.embd;
  }
  if (fuse) {
    matmul(w_.output, last, ws_.logits, w_.output_bias, rows, input_norm(w_.output_norm, w_.output_norm_bias));
    emit("result_norm", -1, ws_.xn, rows * dim);
  } else {
    if (!config_.projects_embedding()) emit("result_norm", -1, hidden, rows * dim);
    matmul(w_.output, hidden, ws_.logits, w_.output_bias, rows);
  }
  emit("logits", -1, ws_.logits, rows * config_.n_vocab);
}

void CudaBackend::embed(int64_t n_tokens) {
  cuda::EmbeddingArgs a;
  a.token_embd = w_.token_embd;
  if (config_.projects_embedding()) {  // narrow rows, then the projection in
    cuda::EmbeddingArgs rows = a;
    rows.tokens = ws_.inputs;
    rows.first_position = ws_.inputs + max_tokens_;
    rows.x = ws_.embd;
    rows.n_tokens = n_tokens;
    rows.stream = stream_.get();
    cuda::embedding(rows);
    matmul(w_.token_embd_proj, ws_.embd, ws_.attn_proj, nullptr, n_tokens);  // attn_proj: free until attention
    a.projected = ws_.attn_proj;
  }
  a.dim = config_.dim;
  a.type_embd = w_.token_type_embd;  // every token has type 0
  a.pos_embd = w_.pos_embd;
  a.tokens = ws_.inputs;
  a.first_position = ws_.inputs + max_tokens_;
  a.position_offset = config_.position_offset;
  a.scale = config_.embedding_scale;
  a.x = ws_.x;
  a.n_tokens = n_tokens;
  a.stream = stream_.get();
  cuda::embedding(a);
  if (w_.token_embd_norm != nullptr) norm(ws_.x, w_.token_embd_norm, w_.token_embd_norm_bias, ws_.x, n_tokens);
  emit("token_embd", -1, ws_.x, n_tokens * config_.dim);
}

void CudaBackend::norm(const float* x, const float* weight, const float* bias, float* y, int64_t n_tokens) {
  cuda::NormArgs n;
  n.kind = config_.norm;
  n.x = x;
  n.weight = weight;
  n.bias = bias;
  n.y = y;
  n.n_tokens = n_tokens;
  n.dim = config_.dim;
  n.eps = config_.norm_eps;
  n.stream = stream_.get();
  cuda::norm(n);
}

cuda::InputNorm CudaBackend::input_norm(const float* weight, const float* bias) const {
  cuda::InputNorm n;
  n.enabled = true;
  n.kind = config_.norm;
  n.weight = weight;
  n.bias = bias;
  n.eps = config_.norm_eps;
  n.out = ws_.xn;
  return n;
}

void CudaBackend::matmul(const DeviceMatrix& w, const float* x, float* y, const float* bias, int64_t n_tokens,
                         const cuda::InputNorm& norm) {
  cuda::MatmulArgs a;
  a.weight = w;
  a.x = x;
  a.y = y;
  a.bias = bias;
  a.n_tokens = n_tokens;
  a.norm = norm;
  a.gemm = gemm_.get();
  a.stream = stream_.get();
  cuda::matmul(a);
}

void CudaBackend::layer_forward(int64_t layer, int64_t n) {
  const ModelConfig& c = config_;
  const DeviceLayer& w = w_.layers[size_t(layer)];
  const int64_t dim = c.dim, q_dim = c.q_dim(), kv_dim = c.kv_dim(), qkv_dim = c.qkv_dim(), ffn = c.ffn_dim;
  cudaStream_t s = stream_.get();
  float* x = ws_.x;
  float* xn = ws_.xn;

  // fused norm + QKV GEMM (a post-norm layer reads the residual stream as it is)
  if (c.post_norm) {
    matmul(w.attn_qkv, x, ws_.qkv, w.attn_qkv_bias, n);
  } else {
    matmul(w.attn_qkv, x, ws_.qkv, w.attn_qkv_bias, n, input_norm(w.attn_norm, w.attn_norm_bias));
    emit("attn_norm", layer, xn, n * dim);
  }
  emit("qkv", layer, ws_.qkv, n * qkv_dim);

  // rotary + KV append
  cuda::RotaryAppendArgs r;
  r.qkv = ws_.qkv;
  r.qkv_stride = qkv_dim;
  r.q_out = ws_.q;
  r.k_out = on_tensor_ ? ws_.k : nullptr;
  r.k_cache = k_layer(layer);
  r.v_cache = v_layer(layer);
  r.kv_stride = n_ctx_;
  r.first_position = ws_.inputs + max_tokens_;
  r.n_tokens = n;
  r.n_heads = int(c.n_heads);
  r.n_kv_heads = int(c.n_kv_heads);
  r.head_dim = int(c.head_dim);
  r.mode = c.position != PositionKind::Rotary       ? cuda::RotaryMode::None
           : c.rotary_style == RotaryStyle::Half ? cuda::RotaryMode::RotateHalf
                                                 : cuda::RotaryMode::RotateEveryTwo;
  r.rotary_dim = int(c.rotary_dim);
  r.theta = c.rope_theta;
  r.position_scale = c.rope_scale;
  r.stream = s;
  cuda::rotary_kv_append(r);
  emit("q", layer, ws_.q, n * q_dim);
  emit("k", layer, ws_.k, n * kv_dim);

  // attention
  cuda::AttentionArgs a;
  a.q = ws_.q;
  a.k_cache = k_layer(layer);
  a.v_cache = v_layer(layer);
  a.out = ws_.att;
  a.first_position = ws_.inputs + max_tokens_;
  a.n_tokens = n;
  a.n_heads = int(c.n_heads);
  a.n_kv_heads = int(c.n_kv_heads);
  a.head_dim = int(c.head_dim);
  a.kv_stride = n_ctx_;
  a.scale = c.attention_scale > 0 ? c.attention_scale : 1.0f / std::sqrt(float(c.head_dim));
  a.causal = c.causal;
  a.window = c.sliding_window;
  a.alibi_slopes = w_.alibi_slopes;
  a.n_splits = cuda::attention_splits(n, a.n_heads, a.n_kv_heads, a.head_dim, n_ctx_, n_multiprocessors_);
  a.partial = ws_.partial;
  a.stream = s;
  cuda::attention(a);
  emit("attn", layer, ws_.att, n * q_dim);

  // output projection + residual (deferred to the end of the layer for a parallel residual)
  matmul(w.attn_out, ws_.att, ws_.attn_proj, nullptr, n);
  emit("attn_out", layer, ws_.attn_proj, n * dim);
  cuda::ResidualArgs res;
  res.residual = x;
  res.n_tokens = n;
  res.dim = dim;
  res.stream = s;
  if (!c.parallel_residual) {
    res.a = ws_.attn_proj;
    res.a_bias = w.attn_out_bias;
    cuda::residual_add_bias(res);
  }
  if (c.post_norm) {
    norm(x, w.attn_norm, w.attn_norm_bias, x, n);
    emit("attn_norm", layer, x, n * dim);
  }

  // norm + MLP GEMM + activation (with shared_layer_norm the MLP reads the attention's normed input)
  const bool gated = is_gated(c.mlp);
  const float* up_bias = gated ? w.ffn_up_bias : nullptr;  // the plain MLP adds its bias in the activation
  if (c.post_norm) {
    matmul(w.ffn_up, x, ws_.up, up_bias, n);
  } else {
    if (c.shared_layer_norm) matmul(w.ffn_up, xn, ws_.up, up_bias, n);
    else matmul(w.ffn_up, x, ws_.up, up_bias, n, input_norm(w.ffn_norm, w.ffn_norm_bias));
    emit("ffn_norm", layer, xn, n * dim);
  }
  float* hidden = ws_.up;
  if (gated) {
    cuda::GatedActivationArgs g;
    g.gate_up = ws_.up;
    g.out = ws_.act;
    g.n_tokens = n;
    g.ffn = ffn;
    g.act = activation_of(c.mlp);
    g.stream = s;
    cuda::gated_activation(g);
    hidden = ws_.act;
  } else {
    cuda::BiasActivationArgs b;
    b.x = ws_.up;
    b.bias = w.ffn_up_bias;
    b.n_tokens = n;
    b.dim = ffn;
    b.act = activation_of(c.mlp);
    b.stream = s;
    cuda::bias_activation(b);
  }
  emit("ffn_act", layer, hidden, n * ffn);

  // down projection + residual
  matmul(w.ffn_down, hidden, ws_.ffn_out, nullptr, n);
  if (c.parallel_residual) {
    res.a = ws_.attn_proj;
    res.a_bias = w.attn_out_bias;
    res.b = ws_.ffn_out;
    res.b_bias = w.ffn_down_bias;
  } else {
    res.a = ws_.ffn_out;
    res.a_bias = w.ffn_down_bias;
  }
  cuda::residual_add_bias(res);
  if (c.post_norm) {
    norm(x, w.ffn_norm, w.ffn_norm_bias, x, n);
    emit("ffn_norm", layer, x, n * dim);
  }
  emit("layer_out", layer, x, n * dim);
}

void CudaBackend::emit(const char* name, int64_t layer, const float* device_data, int64_t n) {
  if (timing_) {
    stage_events_.mark(stream_.get());
    stage_names_.emplace_back(name, int(layer));
  }
  if (!on_tensor_) return;
  host_copy_.resize(size_t(n));
  KILN_CUDA_CHECK(cudaMemcpyAsync(host_copy_.data(), device_data, size_t(n) * sizeof(float), cudaMemcpyDeviceToHost,
                                  stream_.get()));
  stream_.synchronize();
  on_tensor_(name, int(layer), host_copy_.data(), n);
}

}  // namespace

bool cuda_available() { return cuda::device_available(); }

CudaMemoryUse cuda_memory_use(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  KILN_CHECK(cuda != nullptr, "the {} backend holds no GPU memory", backend.name());
  return cuda->memory_use();
}

std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& config, const Weights& weights,
                                           const BackendOptions& options, const CudaOptions& cuda) {
  return std::make_unique<CudaBackend>(config, weights, options, cuda);
}

std::unique_ptr<Backend> make_cuda_backend(const KilnFile& file, const BackendOptions& options,
                                           const CudaOptions& cuda) {
  return std::make_unique<CudaBackend>(file.config(), bind_weights(file), options, cuda);
}

}  // namespace kiln
