#include "engine/cuda_backend.h"

#include <algorithm>
#include <string_view>
#include <vector>

#include "engine/cuda_forward.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "engine/tensor_parallel_backend.h"
#include "engine/weights.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_gemm.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/kv_dtype.h"
#include "kernels/cuda/rotary.h"

namespace kiln {
namespace {

// The KV bytes a one-token step reads, as a share of the weight bytes, up to which its GEMVs stream their
// weights (CudaBackend::streams_weights).
constexpr double kStreamedMaxKvShare = 0.3;

// One sequence's cache: k: [n_layers, n_kv_heads, n_ctx, head_dim], then v likewise. Its rows are
// consecutive positions from the first one (a device scalar).
class ContiguousKv final : public CudaKvStore {
 public:
  ContiguousKv(const ModelConfig& config, int64_t n_ctx, cuda::KvDType dtype)
      : config_(config), n_ctx_(n_ctx), layer_elems_(config.n_kv_heads * n_ctx * config.head_dim), dtype_(dtype) {}

  uint64_t bytes() const {
    return 2 * uint64_t(config_.n_layers) * uint64_t(layer_elems_) * cuda::kv_dtype_bytes(dtype_);
  }
  void allocate() {
    cache_ = cuda::DeviceBuffer(bytes());
    KILN_CUDA_CHECK(cudaMemset(cache_.data(), 0, bytes()));
    KILN_CUDA_CHECK(cudaDeviceSynchronize());  // the legacy stream's memset before the forward's stream runs
  }
  // first_position: device scalar; scratch: plan_scratch(max_tokens) floats, zero; gemm: the forward's GEMM
  // context, or nullptr.
  void bind(const int32_t* first_position, float* scratch, const float* alibi_slopes, cuda::GemmContext* gemm) {
    first_position_ = first_position;
    split_counters_ = reinterpret_cast<int*>(scratch);
    partial_ = scratch + counter_floats();
    alibi_slopes_ = alibi_slopes;
    if (gemm_.rows_per_pass > 0 && gemm != nullptr) {
      gemm_.handle = gemm->handle();
      gemm_.cublas_workspace = gemm->cublas_workspace();
      gemm_.cublas_workspace_bytes = gemm->cublas_workspace_bytes();
      gemm_.scratch = partial_ + partial_floats_;
    }
  }
  ContiguousCacheView view() const { return {layer_at(0), layer_at(config_.n_layers), n_ctx_, dtype_}; }
  // The position of the next step's first token, which the prompt path's GEMM shapes need.
  void set_first_position(int64_t position) { first_position_host_ = position; }

  void append(int64_t layer, float* qkv, float* q, float* k_out, int64_t n, cudaStream_t stream) override {
    const ModelConfig& c = config_;
    cuda::RotaryAppendArgs r;
    r.qkv = qkv;
    r.qkv_stride = c.qkv_dim();
    r.q_out = q;
    r.k_out = k_out;
    r.k_cache = k_layer(layer);
    r.v_cache = v_layer(layer);
    r.kv_stride = n_ctx_;
    r.kv_dtype = dtype_;
    r.first_position = first_position_;
    r.n_tokens = n;
    r.n_kv_heads = int(c.n_kv_heads);
    r.head_dim = int(c.head_dim);
    set_rotary(r, c);
    r.stream = stream;
    cuda::rotary_kv_append(r);
  }

  bool attend(int64_t layer, const float* q, float* out, __half* /*out16*/, int64_t n, cudaStream_t stream) override {
    const ModelConfig& c = config_;
    const bool on_tensor_cores = gemm_.handle != nullptr && n >= kGemmMinTokens;
    cuda::AttentionArgs a;
    a.q = q;
    a.k_cache = k_layer(layer);
    a.v_cache = v_layer(layer);
    a.out = out;
    a.first_position = first_position_;
    a.n_tokens = n;
    a.n_heads = int(c.n_heads);
    a.n_kv_heads = int(c.n_kv_heads);
    a.head_dim = int(c.head_dim);
    a.kv_stride = n_ctx_;
    a.kv_dtype = dtype_;
    a.scale = attention_scale_of(c);
    a.causal = c.causal;
    a.window = c.sliding_window;
    a.alibi_slopes = alibi_slopes_;
    a.n_splits = splits(n);
    a.partial = partial_;
    a.split_counters = split_counters_;
    a.stream = stream;
    if (on_tensor_cores) cuda::attention_gemm(a, first_position_host_, gemm_);
    else cuda::attention(a);
    return false;
  }

  int splits(int64_t n) const {
    return cuda::attention_splits(n, int(config_.n_heads), int(config_.n_kv_heads), int(config_.head_dim), n_ctx_,
                                  n_multiprocessors_);
  }
  // The attention's scratch, in floats: the split counters of its fused merge, the partial results for any
  // row count up to max_tokens, and with an f16 cache the prompt path's queries, scores and probabilities
  // (each part 256-byte aligned).
  size_t plan_scratch(int64_t max_tokens) {
    size_t floats = 0;
    for (int64_t n = 1; n <= max_tokens; ++n)
      floats = std::max(floats,
                        cuda::attention_partial_floats(splits(n), n, int(config_.n_heads), int(config_.head_dim)));
    partial_floats_ = round64(floats);
    size_t gemm_bytes = 0;
    if (dtype_ == cuda::KvDType::F16 && max_tokens >= kGemmMinTokens) {
      gemm_.max_tokens = max_tokens;
      gemm_.max_keys = n_ctx_;
      gemm_.rows_per_pass = cuda::attention_gemm_rows_per_pass(max_tokens, int(config_.n_heads), n_ctx_, kGemmBudget);
      if (gemm_.rows_per_pass > 0)
        gemm_bytes = cuda::attention_gemm_bytes(max_tokens, int(config_.n_heads), int(config_.head_dim), n_ctx_,
                                                gemm_.rows_per_pass);
    }
    return counter_floats() + partial_floats_ + round64((gemm_bytes + sizeof(float) - 1) / sizeof(float));
  }

 private:
  // Prompts of this many tokens or more take the tensor cores (attention_gemm.h), with scores and
  // probabilities of at most this many bytes a pass.
  static constexpr int64_t kGemmMinTokens = 16;
  static constexpr size_t kGemmBudget = size_t(128) << 20;
  static size_t round64(size_t floats) { return (floats + 63) / 64 * 64; }
  size_t counter_floats() const { return round64(cuda::attention_counter_ints(int(config_.n_kv_heads))); }
  void* k_layer(int64_t layer) const { return layer_at(layer); }
  void* v_layer(int64_t layer) const { return layer_at(config_.n_layers + layer); }
  void* layer_at(int64_t index) const {
    return cache_.as<char>() + index * layer_elems_ * int64_t(cuda::kv_dtype_bytes(dtype_));
  }

  const ModelConfig& config_;
  int64_t n_ctx_, layer_elems_;
  cuda::KvDType dtype_;
  int n_multiprocessors_ = cuda::multiprocessor_count();
  cuda::DeviceBuffer cache_;
  const int32_t* first_position_ = nullptr;
  int* split_counters_ = nullptr;
  float* partial_ = nullptr;
  size_t partial_floats_ = 0;
  const float* alibi_slopes_ = nullptr;
  cuda::AttentionGemmSpace gemm_;  // handle set by bind: the prompt path is on
  int64_t first_position_host_ = 0;
};

CudaForwardOptions forward_options(const BackendOptions& options, const CudaOptions& cuda, size_t attention_floats) {
  CudaForwardOptions o;
  o.shard = options.shard;
  o.nccl = cuda.nccl;
  o.max_tokens = options.max_batch;
  o.input_ints = 2 * options.max_batch;  // tokens, then positions
  o.attention_floats = attention_floats;
  o.on_tensor = options.on_tensor;
  o.stage_timer = options.stage_timer;
  o.persistent_decode = cuda.persistent_decode;
  o.persistent_feed = cuda.persistent_feed;
  o.kv_dtype = cuda.kv_dtype;
  return o;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(const ModelConfig& config, const Weights& weights, const BackendOptions& options,
              const CudaOptions& cuda);
  ~CudaBackend() override { cudaSetDevice(device_); }  // the members free their memory on the right GPU

  const ModelConfig& config() const override { return config_; }
  int64_t n_ctx() const override { return n_ctx_; }
  std::string_view name() const override { return "CUDA"; }
  int64_t n_past() const override { return n_past_; }
  void forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
               bool all_logits) override;
  const float* forward_last(const int32_t* tokens, int64_t n_tokens, int64_t first_position) override;
  // A rank of a split model holds part of the vocabulary: its rows' best are not the model's.
  int64_t max_top_k() const override {
    return whole_vocab_ && config_.lm_head ? std::min(kMaxTopLogits, n_vocab_) : 0;
  }
  TopLogits forward_top(const int32_t* tokens, int64_t n_tokens, int64_t first_position, int64_t k) override;
  void reset() override { n_past_ = 0; }
  bool persistent_decode_ready() const { return forward_->persistent_ready(); }
  CudaMemoryUse memory_use() const {
    return {forward_->allocated_weight_bytes(), kv_->bytes(), forward_->allocated_workspace_bytes()};
  }

 private:
  // forward's checks and chunks; the last chunk's logits go to `logits`, or its k best to top_ (top_k > 0).
  void forward_chunks(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                      bool all_logits, int64_t top_k);
  void forward_chunk(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                     bool all_logits, int64_t top_k);
  // launches only: graph-capturable; persistent: a decode step as one kernel (CudaForward::run_layers_persistent)
  void run(int64_t n_tokens, bool want_logits, bool all_logits, bool persistent = false);
  bool streams_weights(int64_t position) const;

  ModelConfig config_;
  CudaOptions cuda_;
  int64_t n_vocab_;  // the whole model's: a split model's rank takes every token
  bool whole_vocab_;  // not a rank of a split model
  int device_;
  int64_t max_tokens_, n_ctx_;
  bool on_tensor_;
  std::unique_ptr<ContiguousKv> kv_;
  std::unique_ptr<CudaForward> forward_;
  cuda::PinnedBuffer staging_;  // [2, max_tokens] int32: what the forward's inputs receive
  cuda::PinnedBuffer top_;      // forward_top's row (top_logits_words(1, max_top_k()) words)
  cuda::PinnedBuffer last_;     // forward_last's row [output_width]
  cuda::CudaGraph decode_graphs_[2];  // [whether its GEMVs stream their weights]
  cuda::CudaGraph persistent_graph_;
  int64_t n_past_ = 0;
};

CudaBackend::CudaBackend(const ModelConfig& config, const Weights& weights, const BackendOptions& options,
                         const CudaOptions& cuda)
    : config_(config),
      cuda_(cuda),
      n_vocab_(options.shard.whole() ? config.n_vocab : options.shard.n_vocab),
      whole_vocab_(options.shard.whole()),
      device_(select_cuda_device(cuda.device)),
      max_tokens_(options.max_batch),
      n_ctx_(context_size(config, weights, options.n_ctx)),
      on_tensor_(bool(options.on_tensor)) {
  const ModelConfig& c = config_;
  KILN_CHECK(max_tokens_ >= 1 && max_tokens_ <= 65536, "the batch size {} is outside [1, 65536]", max_tokens_);
  KILN_CHECK(c.head_dim <= cuda::kAttentionMaxHeadDim, "head_dim {} is larger than the CUDA attention's {}",
             c.head_dim, cuda::kAttentionMaxHeadDim);
  kv_ = std::make_unique<ContiguousKv>(config_, n_ctx_, cuda.kv_dtype);
  KILN_CHECK(kv_->bytes() <= options.max_kv_bytes,
             "a KV cache for {} positions needs {:.1f} GiB, more than the {:.1f} GiB allowed: use a smaller context size",
             n_ctx_, double(kv_->bytes()) / (1u << 30), double(options.max_kv_bytes) / (1u << 30));
  // Plan the weights, KV cache and workspace, and check they fit before allocating any of them.
  const size_t attention_floats = std::max(kv_->plan_scratch(max_tokens_), top_logits_words(1, max_top_k()));
  forward_ = std::make_unique<CudaForward>(config_, weights, forward_options(options, cuda, attention_floats));
  check_gpu_memory(device_, forward_->weight_bytes(), kv_->bytes(), fmt::format("KV cache for {} positions", n_ctx_),
                   forward_->workspace_bytes(), max_tokens_, "use a smaller context (-c) or --device cpu");
  forward_->allocate();
  kv_->allocate();
  kv_->bind(forward_->inputs() + max_tokens_, forward_->attention_scratch(), forward_->alibi_slopes(),
            forward_->gemm_context());
  staging_ = cuda::PinnedBuffer(2 * size_t(max_tokens_) * sizeof(int32_t));
  top_ = cuda::PinnedBuffer(top_logits_words(1, max_top_k()) * sizeof(float));
  last_ = cuda::PinnedBuffer(size_t(c.output_width()) * sizeof(float));
}

void CudaBackend::forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                          bool all_logits) {
  forward_chunks(tokens, n_tokens, first_position, logits, all_logits, 0);
}

const float* CudaBackend::forward_last(const int32_t* tokens, int64_t n_tokens, int64_t first_position) {
  forward_chunks(tokens, n_tokens, first_position, last_.as<float>(), false, 0);
  return last_.as<float>();
}

TopLogits CudaBackend::forward_top(const int32_t* tokens, int64_t n_tokens, int64_t first_position, int64_t k) {
  KILN_CHECK(k >= 1 && k <= max_top_k(), "the CUDA backend returns the 1 to {} best logits of a row, not {}",
             max_top_k(), k);
  forward_chunks(tokens, n_tokens, first_position, nullptr, false, k);
  return top_logits_view(top_.as<float>(), 1, k);
}

void CudaBackend::forward_chunks(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                                 bool all_logits, int64_t top_k) {
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
    KILN_CHECK(tokens[i] >= 0 && tokens[i] < n_vocab_, "token {} at index {} is outside the vocabulary of {}",
               tokens[i], i, n_vocab_);
  KILN_CUDA_CHECK(cudaSetDevice(device_));

  n_past_ = first_position;
  for (int64_t start = 0; start < n_tokens; start += max_tokens_) {
    const int64_t n = std::min(max_tokens_, n_tokens - start);
    const bool last = start + n == n_tokens;
    float* out = logits == nullptr ? nullptr
                 : all_logits      ? logits + start * config_.output_width()
                 : last            ? logits
                                   : nullptr;
    forward_chunk(tokens + start, n, first_position + start, out, all_logits, last ? top_k : 0);
    n_past_ = first_position + start + n;
  }
}

void CudaBackend::forward_chunk(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                                bool all_logits, int64_t top_k) {
  cudaStream_t s = forward_->stream();
  int32_t* staged = staging_.as<int32_t>();
  std::copy(tokens, tokens + n_tokens, staged);
  for (int64_t i = 0; i < n_tokens; ++i) staged[max_tokens_ + i] = int32_t(first_position + i);
  int32_t* inputs = forward_->inputs();
  KILN_CUDA_CHECK(cudaMemcpyAsync(inputs, staged, size_t(n_tokens) * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  KILN_CUDA_CHECK(cudaMemcpyAsync(inputs + max_tokens_, staged + max_tokens_, size_t(n_tokens) * sizeof(int32_t),
                                  cudaMemcpyHostToDevice, s));
  kv_->set_first_position(first_position);
  const bool want_logits = logits != nullptr || top_k > 0;
  const bool timing = forward_->begin_stage_timing();
  const bool stream_weights = streams_weights(first_position);
  forward_->set_stream_weights(stream_weights);
  if (n_tokens == 1 && want_logits && cuda_.use_graph && !on_tensor_ && !timing) {
    const bool persistent = forward_->persistent_ready() && first_position < cuda_.persistent_max_position;
    cuda::CudaGraph& graph = persistent ? persistent_graph_ : decode_graphs_[stream_weights ? 1 : 0];
    if (!graph.captured()) graph.capture(s, [&] { run(1, true, false, persistent); });
    graph.launch(s);
  } else {
    run(n_tokens, want_logits, all_logits);
  }
  if (top_k > 0) {
    forward_->top_logits(1, top_k);
    KILN_CUDA_CHECK(cudaMemcpyAsync(top_.as<float>(), forward_->attention_scratch(),
                                    top_logits_words(1, top_k) * sizeof(float), cudaMemcpyDeviceToHost, s));
  } else if (want_logits) {
    const int64_t rows = all_logits ? n_tokens : 1;
    KILN_CUDA_CHECK(cudaMemcpyAsync(logits, forward_->logits(), size_t(rows * config_.output_width()) * sizeof(float),
                                    cudaMemcpyDeviceToHost, s));
  }
  KILN_CUDA_CHECK(cudaStreamSynchronize(s));  // the staging buffer is reused by the next chunk
  forward_->report_stage_times();
}

// A one-token step streams its f16/bf16 weights through shared memory (cuda::MatmulArgs::stream_weights)
// unless it reads many keys and values. On an H200 (f16 KV, tg64), with the KV bytes read as a share of
// the weight bytes: the 7B shape streamed faster at 4K keys (share 0.16: 219.6 against 213.8 t/s) and
// slower at 8K (0.32: 185.7 / 190.5) to 32K (1.27: 117.0 / 124.4); the 8B shape (GQA) streamed faster at
// every depth to 32K (0.27: 145.5 / 140.6). Timed stage by stage, the 7B's streamed GEMVs were only ~4 us
// a layer slower at 32K: most of the loss is in how the step's kernels overlap.
bool CudaBackend::streams_weights(int64_t position) const {
  const double kv_bytes_read = double(kv_->bytes()) / double(n_ctx_) * double(position + 1);
  return kv_bytes_read <= kStreamedMaxKvShare * double(forward_->weight_bytes());
}

void CudaBackend::run(int64_t n_tokens, bool want_logits, bool all_logits, bool persistent) {
  const int32_t* inputs = forward_->inputs();
  if (persistent) forward_->run_layers_persistent(inputs, inputs + max_tokens_, kv_->view());
  else forward_->run_layers(inputs, inputs + max_tokens_, n_tokens, *kv_);
  if (!want_logits) return;  // prefill: the cache is filled
  const int64_t rows = all_logits ? n_tokens : 1;
  forward_->head(forward_->hidden() + (n_tokens - rows) * config_.dim, rows);
}

}  // namespace

bool cuda_available() { return cuda::device_available(); }

CudaMemoryUse cuda_memory_use(const Backend& backend) {
  if (const auto* split = dynamic_cast<const TensorParallelBackend*>(&backend))  // GPU 0's: rank 0's
    return cuda_memory_use(split->rank_backend(0));
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  KILN_CHECK(cuda != nullptr, "the {} backend holds no GPU memory", backend.name());
  return cuda->memory_use();
}

bool cuda_persistent_decode_ready(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda != nullptr && cuda->persistent_decode_ready();
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
