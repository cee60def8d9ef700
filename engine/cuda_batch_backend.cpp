#include "engine/cuda_batch_backend.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <tuple>
#include <vector>

#include "engine/batch_step.h"
#include "engine/cuda_forward.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "engine/paged_kv_cache.h"
#include "engine/weights.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/paged_attention.h"

namespace kiln {
namespace {

constexpr int64_t kBlockPositions = 16;
constexpr size_t kMaxGraphs = 64;  // step shapes kept as graphs; later shapes run their launches

// The pool on the device: k: [n_layers, n_blocks, n_kv_heads, block_positions, head_dim], then v likewise.
class PagedKv final : public CudaKvStore {
 public:
  PagedKv(const ModelConfig& config, int64_t n_ctx, cuda::KvDType dtype, int64_t chunk_keys)
      : config_(config), n_ctx_(n_ctx), chunk_keys_(chunk_keys) {
    layout_.block_positions = kBlockPositions;
    layout_.n_kv_heads = int(config.n_kv_heads);
    layout_.head_dim = int(config.head_dim);
    layout_.dtype = dtype;
    prompt_tiles_ = cuda::paged_prompt_attention_supported(layout_, int(config.n_heads));
  }

  // Whether prompt rows are attended in tiles on the tensor cores, and the rows a tile holds at most.
  bool prompt_tiles() const { return prompt_tiles_; }
  int64_t tile_rows() const { return cuda::paged_prompt_tile_rows(int(config_.n_heads), int(config_.n_kv_heads)); }

  // One block of every layer, keys and values.
  uint64_t block_bytes() const {
    return 2 * uint64_t(config_.n_layers) * uint64_t(config_.kv_dim()) * kBlockPositions *
           cuda::kv_dtype_bytes(layout_.dtype);
  }
  // Scratch floats for the split attention of up to max_rows rows.
  size_t partial_floats(int64_t max_rows) const {
    return cuda::paged_attention_partial_floats(max_rows, int(config_.n_heads), int(config_.head_dim), n_ctx_,
                                                chunk_keys_);
  }
  void allocate(const KvBlockTable& table) {
    n_blocks_ = table.n_blocks();
    layout_.max_blocks_per_seq = table.max_blocks_per_seq();
    pool_ = cuda::DeviceBuffer(uint64_t(n_blocks_) * block_bytes());
  }
  // Device arrays the forward's inputs hold: the block table, each row's sequence and position.
  void bind(const int32_t* block_table, const int32_t* row_seq, const int32_t* row_position, float* partial,
            const float* alibi_slopes, const int32_t* row_in_tile, const int32_t* tiles) {
    layout_.block_table = block_table;
    row_seq_ = row_seq;
    row_position_ = row_position;
    partial_ = partial;
    alibi_slopes_ = alibi_slopes;
    row_in_tile_ = row_in_tile;
    tiles_ = tiles;
  }
  // The next step's prompt tiles (on the device already), and whether it has rows outside them.
  void set_step(int64_t n_tiles, bool rows_outside_tiles) {
    n_tiles_ = n_tiles;
    rows_outside_tiles_ = rows_outside_tiles;
  }
  bool all_rows_tiled() const { return !rows_outside_tiles_; }
  uint64_t bytes() const { return pool_.bytes(); }

  void append(int64_t layer, float* qkv, float* q, float* k_out, int64_t n, cudaStream_t stream) override {
    const ModelConfig& c = config_;
    cuda::PagedRotaryStoreArgs a;
    a.kv = layer_layout(layer);
    a.qkv = qkv;
    a.qkv_stride = c.qkv_dim();
    a.q_out = q;
    a.k_out = k_out;
    a.row_seq = row_seq_;
    a.row_position = row_position_;
    a.n_rows = n;
    set_rotary(a, c);
    a.stream = stream;
    cuda::paged_rotary_kv_store(a);
  }

  // The prompt tiles' rows.
  bool attend_apart(int64_t layer, const float* q, float* out, int64_t n, cudaStream_t stream) override {
    if (n_tiles_ == 0) return false;
    cuda::paged_prompt_attention(attention_args(layer, q, out, n, stream), tiles_, n_tiles_);
    return true;
  }

  // Every row's output in f16 too when no row is a prompt tile's (the tiles write f32 alone).
  bool attend(int64_t layer, const float* q, float* out, __half* out16, int64_t n, cudaStream_t stream) override {
    if (!rows_outside_tiles_) return false;
    cuda::PagedAttentionArgs a = attention_args(layer, q, out, n, stream);
    if (n_tiles_ > 0) a.skip_rows = row_in_tile_;
    else a.out16 = out16;
    cuda::paged_attention(a);
    return a.out16 != nullptr;
  }

 private:
  cuda::PagedAttentionArgs attention_args(int64_t layer, const float* q, float* out, int64_t n,
                                          cudaStream_t stream) const {
    const ModelConfig& c = config_;
    cuda::PagedAttentionArgs a;
    a.kv = layer_layout(layer);
    a.q = q;
    a.out = out;
    a.row_seq = row_seq_;
    a.row_position = row_position_;
    a.n_rows = n;
    a.n_heads = int(c.n_heads);
    a.scale = attention_scale_of(c);
    a.window = c.sliding_window;
    a.alibi_slopes = alibi_slopes_;
    a.partial = partial_;  // always split, at fixed key boundaries: a row's sum never depends on the step
    a.max_keys = n_ctx_;
    a.chunk_keys = chunk_keys_;
    a.stream = stream;
    return a;
  }

  cuda::PagedKvLayout layer_layout(int64_t layer) const {
    cuda::PagedKvLayout l = layout_;
    const uint64_t half = uint64_t(n_blocks_) * (block_bytes() / 2);  // all keys, then all values
    const uint64_t layer_bytes = half / uint64_t(config_.n_layers);
    char* base = pool_.as<char>();
    l.k_pool = base + uint64_t(layer) * layer_bytes;
    l.v_pool = base + half + uint64_t(layer) * layer_bytes;
    return l;
  }

  const ModelConfig& config_;
  int64_t n_ctx_, chunk_keys_;
  int64_t n_blocks_ = 0;
  cuda::PagedKvLayout layout_;
  cuda::DeviceBuffer pool_;
  const int32_t* row_seq_ = nullptr;
  const int32_t* row_position_ = nullptr;
  float* partial_ = nullptr;
  const float* alibi_slopes_ = nullptr;
  bool prompt_tiles_ = false;
  const int32_t* row_in_tile_ = nullptr;
  const int32_t* tiles_ = nullptr;
  int64_t n_tiles_ = 0;
  bool rows_outside_tiles_ = true;
};

int64_t attention_chunk(const CudaBatchOptions& cuda, const BatchBackendOptions& options) {
  KILN_CHECK(cuda.attention_chunk_keys >= 0 && cuda.attention_chunk_keys <= (int64_t(1) << 20),
             "attention splits of {} keys: give 0 (by the sequences) or 1 to 2^20", cuda.attention_chunk_keys);
  if (cuda.attention_chunk_keys > 0) return cuda.attention_chunk_keys;
  return options.max_sequences >= 64 ? 2048 : cuda::kPagedAttentionChunkKeys;
}

const ModelConfig& checked_for_batch(const ModelConfig& config) {
  KILN_CHECK(config.causal && config.lm_head,
             "this {} model is an encoder: it embeds text (kiln embed) and cannot generate in a batch",
             config.architecture);
  KILN_CHECK(config.head_dim <= cuda::kPagedAttentionMaxHeadDim, "head_dim {} is larger than the CUDA attention's {}",
             config.head_dim, cuda::kPagedAttentionMaxHeadDim);
  return config;
}

// The device inputs of a step, one int32 array staged and uploaded whole:
// [tokens T][positions T][row_seq T][logit_rows T][row_in_tile T][tiles 2T][block table S x B].
struct InputLayout {
  int64_t T, table_ints;
  int64_t tokens() const { return 0; }
  int64_t positions() const { return T; }
  int64_t row_seq() const { return 2 * T; }
  int64_t logit_rows() const { return 3 * T; }
  int64_t row_in_tile() const { return 4 * T; }
  int64_t tiles() const { return 5 * T; }
  int64_t block_table() const { return 7 * T; }
  int64_t ints() const { return 7 * T + table_ints; }
};

class CudaBatchBackend final : public BatchBackend {
 public:
  CudaBatchBackend(const ModelConfig& config, const Weights& weights, const BatchBackendOptions& options,
                   const CudaBatchOptions& cuda);

  std::string_view name() const override { return "CUDA"; }
  const ModelConfig& config() const override { return config_; }
  int64_t n_ctx() const override { return n_ctx_; }
  int64_t max_sequences() const override { return max_sequences_; }
  int64_t max_step_tokens() const override { return in_.T; }
  int64_t block_positions() const override { return kBlockPositions; }
  int64_t free_blocks() const override { return table_->free_blocks(); }
  bool reserve(int32_t seq, int64_t n_positions) override { return table_->reserve(seq, n_positions); }
  void forward(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows, int64_t n_logit_rows,
               float* logits) override;
  int64_t max_top_k() const override { return std::min(kMaxTopLogits, config_.n_vocab); }
  TopLogits forward_top(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows, int64_t n_logit_rows,
                        int64_t k) override;
  void release(int32_t seq) override { table_->release(seq); }
  float* logits_buffer(int64_t n_rows) override;

 private:
  int64_t plan_blocks(const BatchBackendOptions& options, uint64_t fixed_bytes) const;
  // Stages the step step_ has checked and launches it on the forward's stream (top_k > 0: the rows' k best after
  // the head, in the top area); the caller copies what it needs back and synchronizes.
  void launch(int64_t n_tokens, const int32_t* logit_rows, int64_t n_logit_rows, int64_t top_k);
  // The step's launches (graph-capturable): the layers, then the asked rows gathered, the head and the best.
  void run(int64_t n_tokens, int64_t n_logit_rows, bool in_order, int64_t top_k);
  // The step's rows by kind (prompt rows or not) when the forward splits them, else none.
  void find_runs(int64_t n_tokens);
  // Cuts the step's prompt rows into tiles (into the staged inputs) and tells kv_; returns the tile count.
  int64_t stage_prompt_tiles(int64_t n_tokens, int32_t* staged);

  ModelConfig config_;
  int device_;
  int64_t n_ctx_, max_sequences_;
  InputLayout in_;
  PagedKv kv_;
  std::unique_ptr<CudaForward> forward_;
  std::unique_ptr<KvBlockTable> table_;
  BatchStep step_;
  cuda::PinnedBuffer staging_;  // [in_.ints()] what the forward's inputs receive
  cuda::PinnedBuffer logits_;   // logits_buffer()
  cuda::PinnedBuffer top_;      // forward_top's rows (top_logits_words), copied from the attention scratch
  bool use_graph_;
  std::vector<RowRun> runs_;  // this step's
  // rows, logit rows, in order, tiles, all tiled, top k, each run's rows (negative: prompt rows)
  using StepShape = std::tuple<int64_t, int64_t, bool, int64_t, bool, int64_t, std::vector<int64_t>>;
  std::map<StepShape, int> seen_;                         // steps run per shape, until captured
  std::map<StepShape, std::unique_ptr<cuda::CudaGraph>> graphs_;
};

CudaBatchBackend::CudaBatchBackend(const ModelConfig& config, const Weights& weights,
                                   const BatchBackendOptions& options, const CudaBatchOptions& cuda)
    : config_(checked_for_batch(config)),
      device_(select_cuda_device(cuda.device)),
      n_ctx_(context_size(config, weights, options.n_ctx)),
      max_sequences_(options.max_sequences),
      in_{options.max_step_tokens, 0},
      kv_(config_, n_ctx_, cuda.kv_dtype, attention_chunk(cuda, options)),
      step_(std::max<int64_t>(options.max_sequences, 1), std::max<int64_t>(options.max_step_tokens, 1)),
      use_graph_(cuda.use_graph) {
  KILN_CHECK(in_.T >= 1 && in_.T <= 65536, "the step size {} is outside [1, 65536]", in_.T);
  KILN_CHECK(max_sequences_ >= 1 && max_sequences_ <= (int64_t(1) << 20),
             "the number of sequences {} is outside [1, 2^20]", max_sequences_);
  const int64_t max_blocks_per_seq = (n_ctx_ + kBlockPositions - 1) / kBlockPositions;
  KILN_CHECK(max_sequences_ * max_blocks_per_seq <= (int64_t(1) << 26),
             "a block table of {} sequences x {} blocks is too large: use fewer sequences or a smaller context",
             max_sequences_, max_blocks_per_seq);
  in_.table_ints = max_sequences_ * max_blocks_per_seq;

  CudaForwardOptions fo;
  fo.max_tokens = in_.T;
  fo.batched = true;
  fo.invariant_rows = cuda.matmul_rows;
  fo.prompt_rows = cuda.prompt_matmul_rows;
  fo.stage_timer = cuda.stage_timer;
  fo.input_ints = in_.ints();
  // the caller's scratch: the attention's split partials during the layers, the top area after the head
  fo.attention_floats = std::max(kv_.partial_floats(in_.T), top_logits_words(in_.T, max_top_k()));
  forward_ = std::make_unique<CudaForward>(config_, weights, fo);
  const int64_t n_blocks = plan_blocks(options, forward_->weight_bytes() + forward_->workspace_bytes());
  check_gpu_memory(device_, forward_->weight_bytes(), uint64_t(n_blocks) * kv_.block_bytes(),
                   fmt::format("KV pool of {} blocks of {} positions", n_blocks, kBlockPositions),
                   forward_->workspace_bytes(), in_.T, "give less --kv-memory, a smaller -b or --device cpu");
  table_ = std::make_unique<KvBlockTable>(n_blocks, n_ctx_, max_sequences_, kBlockPositions);
  forward_->allocate();
  kv_.allocate(*table_);
  const int32_t* inputs = forward_->inputs();
  kv_.bind(inputs + in_.block_table(), inputs + in_.row_seq(), inputs + in_.positions(), forward_->attention_scratch(),
           forward_->alibi_slopes(), inputs + in_.row_in_tile(), inputs + in_.tiles());
  staging_ = cuda::PinnedBuffer(size_t(in_.ints()) * sizeof(int32_t));
  top_ = cuda::PinnedBuffer(top_logits_words(in_.T, max_top_k()) * sizeof(float));
}

// Blocks of the pool: what kv_bytes holds (0: 90% of the free memory beside fixed_bytes), never more than
// every slot's full context.
int64_t CudaBatchBackend::plan_blocks(const BatchBackendOptions& options, uint64_t fixed_bytes) const {
  uint64_t bytes = options.kv_bytes;
  if (bytes == 0) {
    size_t free_bytes = 0, total_bytes = 0;
    KILN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const auto usable = uint64_t(double(free_bytes) * 0.9);
    bytes = usable > fixed_bytes ? usable - fixed_bytes : 0;
  }
  const uint64_t most = uint64_t(std::min<int64_t>(in_.table_ints, std::numeric_limits<int32_t>::max()));
  const uint64_t blocks = std::min(bytes / kv_.block_bytes(), most);
  KILN_CHECK(blocks >= 1, "{} bytes of KV memory hold no block of {} positions ({} bytes): allow more KV memory",
             bytes, kBlockPositions, kv_.block_bytes());
  return int64_t(blocks);
}

void CudaBatchBackend::forward(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows,
                               int64_t n_logit_rows, float* logits) {
  step_.check(*table_, config_.n_vocab, tokens, n_tokens, logit_rows, n_logit_rows, logits);
  launch(n_tokens, logit_rows, n_logit_rows, 0);
  cudaStream_t s = forward_->stream();
  if (n_logit_rows > 0)
    KILN_CUDA_CHECK(cudaMemcpyAsync(logits, forward_->logits(), size_t(n_logit_rows * config_.n_vocab) * sizeof(float),
                                    cudaMemcpyDeviceToHost, s));
  KILN_CUDA_CHECK(cudaStreamSynchronize(s));  // the staging buffer is reused by the next step
  forward_->report_stage_times();
}

TopLogits CudaBatchBackend::forward_top(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows,
                                        int64_t n_logit_rows, int64_t k) {
  KILN_CHECK(k >= 1 && k <= max_top_k(), "the CUDA batch backend returns the 1 to {} best logits of a row, not {}",
             max_top_k(), k);
  float* host = top_.as<float>();
  step_.check(*table_, config_.n_vocab, tokens, n_tokens, logit_rows, n_logit_rows, host);
  launch(n_tokens, logit_rows, n_logit_rows, k);
  cudaStream_t s = forward_->stream();
  KILN_CUDA_CHECK(cudaMemcpyAsync(host, forward_->attention_scratch(),
                                  top_logits_words(n_logit_rows, k) * sizeof(float), cudaMemcpyDeviceToHost, s));
  KILN_CUDA_CHECK(cudaStreamSynchronize(s));
  forward_->report_stage_times();
  return top_logits_view(host, n_logit_rows, k);
}

void CudaBatchBackend::launch(int64_t n_tokens, const int32_t* logit_rows, int64_t n_logit_rows, int64_t top_k) {
  KILN_CUDA_CHECK(cudaSetDevice(device_));
  step_.grow(*table_, n_tokens);

  int32_t* staged = staging_.as<int32_t>();
  const auto rows_bytes = size_t(n_tokens) * sizeof(int32_t);
  std::memcpy(staged + in_.tokens(), step_.tokens(), rows_bytes);
  std::memcpy(staged + in_.positions(), step_.row_position(), rows_bytes);
  std::memcpy(staged + in_.row_seq(), step_.row_seq(), rows_bytes);
  bool in_order = true;  // the asked rows are the step's first rows, in order: nothing to gather
  for (int64_t i = 0; i < n_logit_rows; ++i) {
    staged[in_.logit_rows() + i] = logit_rows[i];
    in_order = in_order && logit_rows[i] == i;
  }
  const int64_t n_tiles = stage_prompt_tiles(n_tokens, staged);
  std::memcpy(staged + in_.block_table(), table_->block_table(), size_t(in_.table_ints) * sizeof(int32_t));
  cudaStream_t s = forward_->stream();
  int32_t* inputs = forward_->inputs();
  KILN_CUDA_CHECK(cudaMemcpyAsync(inputs, staged, size_t(in_.ints()) * sizeof(int32_t), cudaMemcpyHostToDevice, s));

  find_runs(n_tokens);
  std::vector<int64_t> run_rows;
  for (const RowRun& run : runs_) run_rows.push_back(run.prompt ? -run.count : run.count);
  const StepShape shape{n_tokens, n_logit_rows, in_order, n_tiles, kv_.all_rows_tiled(), top_k, run_rows};
  const bool timing = forward_->begin_stage_timing();
  auto graph = timing ? graphs_.end() : graphs_.find(shape);
  if (!timing && graph == graphs_.end() && use_graph_ && graphs_.size() < kMaxGraphs && seen_[shape]++ > 0) {
    auto captured = std::make_unique<cuda::CudaGraph>();
    captured->capture(s, [&] { run(n_tokens, n_logit_rows, in_order, top_k); });
    graph = graphs_.emplace(shape, std::move(captured)).first;
    seen_.erase(shape);
  }
  if (seen_.size() > 4096) seen_.clear();  // shapes met once each, as prompt chunks can be
  if (graph != graphs_.end()) graph->second->launch(s);
  else run(n_tokens, n_logit_rows, in_order, top_k);
}

void CudaBatchBackend::find_runs(int64_t n_tokens) {
  runs_.clear();
  if (!forward_->splits_prompt_rows()) return;
  const int32_t* prompt = step_.row_prompt();
  for (int64_t r = 0; r < n_tokens; ++r) {
    if (runs_.empty() || runs_.back().prompt != (prompt[r] != 0)) runs_.push_back({r, 0, prompt[r] != 0});
    ++runs_.back().count;
  }
}

int64_t CudaBatchBackend::stage_prompt_tiles(int64_t n_tokens, int32_t* staged) {
  int32_t* in_tile = staged + in_.row_in_tile();
  int32_t* tiles = staged + in_.tiles();
  const int32_t* prompt = step_.row_prompt();
  const int32_t* seq = step_.row_seq();
  int64_t n_tiles = 0, n_tiled = 0;
  for (int64_t r = 0; r < n_tokens; ++r) {
    in_tile[r] = kv_.prompt_tiles() ? prompt[r] : 0;
    if (in_tile[r] == 0) continue;
    ++n_tiled;
    const bool extends = n_tiles > 0 && tiles[2 * n_tiles - 2] + tiles[2 * n_tiles - 1] == r &&
                         seq[tiles[2 * n_tiles - 2]] == seq[r] && tiles[2 * n_tiles - 1] < kv_.tile_rows();
    if (extends) {
      ++tiles[2 * n_tiles - 1];
    } else {
      tiles[2 * n_tiles] = int32_t(r);
      tiles[2 * n_tiles + 1] = 1;
      ++n_tiles;
    }
  }
  kv_.set_step(n_tiles, n_tiled < n_tokens);
  return n_tiles;
}

// Pinned memory is slow to allocate: logits_buffer_floats makes it once a run.
float* CudaBatchBackend::logits_buffer(int64_t n_rows) {
  const size_t bytes = logits_buffer_floats(n_rows) * sizeof(float);
  if (logits_.bytes() < bytes) logits_ = cuda::PinnedBuffer(bytes);
  return logits_.as<float>();
}

void CudaBatchBackend::run(int64_t n_tokens, int64_t n_logit_rows, bool in_order, int64_t top_k) {
  const int32_t* inputs = forward_->inputs();
  forward_->run_layers(inputs + in_.tokens(), inputs + in_.positions(), n_tokens, kv_, runs_);
  if (n_logit_rows == 0) return;
  const float* hidden = forward_->hidden();
  if (!in_order) {  // a row gather is an embedding lookup in a table of the step's rows
    cuda::EmbeddingArgs g;
    g.token_embd = {DType::F32, n_tokens, config_.dim, hidden, nullptr, 0};
    g.tokens = inputs + in_.logit_rows();
    g.first_position = inputs + in_.logit_rows();
    g.x = forward_->spare_rows();
    g.n_tokens = n_logit_rows;
    g.stream = forward_->stream();
    cuda::embedding(g);
    hidden = forward_->spare_rows();
  }
  forward_->head(hidden, n_logit_rows);
  if (top_k > 0) forward_->top_logits(n_logit_rows, top_k);
}

}  // namespace

int64_t matmul_rows_for(int64_t max_sequences) {
  return max_sequences <= 32 ? 32 : std::clamp<int64_t>((max_sequences + 63) / 64 * 64, 64, 256);
}

std::unique_ptr<BatchBackend> make_cuda_batch_backend(const ModelConfig& config, const Weights& weights,
                                                      const BatchBackendOptions& options,
                                                      const CudaBatchOptions& cuda) {
  return std::make_unique<CudaBatchBackend>(config, weights, options, cuda);
}

std::unique_ptr<BatchBackend> make_cuda_batch_backend(const KilnFile& file, const BatchBackendOptions& options,
                                                      const CudaBatchOptions& cuda) {
  return std::make_unique<CudaBatchBackend>(file.config(), bind_weights(file), options, cuda);
}

}  // namespace kiln
