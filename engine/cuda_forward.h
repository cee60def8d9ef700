// The CUDA model forward, shared by the single-sequence backend and the batched one: the weights on the
// device, one workspace, embeddings, the one top-to-bottom layer function for every family (reading
// ModelConfig fields, stage for stage as engine/cpu_forward.cpp) and the output head. Each row carries its
// own position; where keys and values live (one contiguous cache or a paged pool) is the caller's
// CudaKvStore. Nothing is allocated per step.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/backend.h"
#include "engine/model_config.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_matrix.h"
#include "kernels/cuda/event_timer.h"
#include "kernels/cuda/kv_dtype.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/persistent_decode.h"
#include "kernels/cuda/rotary.h"

namespace kiln {

struct Weights;
class WeightPlan;
namespace cuda {
class NcclGroup;
}

struct CudaLayerWeights {
  const float* attn_norm = nullptr;       // [dim]
  const float* attn_norm_bias = nullptr;  // [dim] or nullptr
  cuda::DeviceMatrix attn_qkv;            // [q_dim + 2 * kv_dim, dim]
  const float* attn_qkv_bias = nullptr;   // [q_dim + 2 * kv_dim] or nullptr
  cuda::DeviceMatrix attn_out;            // [dim, q_dim]
  const float* attn_out_bias = nullptr;   // [dim] or nullptr
  const float* ffn_norm = nullptr;        // [dim] or nullptr (shared_layer_norm)
  const float* ffn_norm_bias = nullptr;   // [dim] or nullptr
  cuda::DeviceMatrix ffn_up;              // [2 * ffn_dim or ffn_dim, dim]
  const float* ffn_up_bias = nullptr;     // [rows of ffn_up] or nullptr
  cuda::DeviceMatrix ffn_down;            // [dim, ffn_dim]
  const float* ffn_down_bias = nullptr;   // [dim] or nullptr
};

// Device copies of Weights, in one allocation. A tensor bound twice (tied embeddings) is copied once.
struct CudaWeights {
  cuda::DeviceBuffer storage;
  cuda::DeviceMatrix token_embd, token_embd_proj, pos_embd, token_type_embd, output_proj, output;
  const float* token_embd_norm = nullptr;
  const float* token_embd_norm_bias = nullptr;
  std::vector<CudaLayerWeights> layers;
  const float* output_norm = nullptr;
  const float* output_norm_bias = nullptr;
  const float* output_bias = nullptr;
  const float* alibi_slopes = nullptr;  // [n_heads] or nullptr
};

// The attention stage's memory of earlier positions.
class CudaKvStore {
 public:
  virtual ~CudaKvStore() = default;
  // Rotary + KV append: the rotated queries of qkv: [n, qkv_dim] go to q: [n, q_dim], the rows' rotated keys
  // and values are kept for `layer`; k_out: [n, kv_dim] receives the rotated keys unless nullptr.
  virtual void append(int64_t layer, float* qkv, float* q, float* k_out, int64_t n, cudaStream_t stream) = 0;
  // out: [n, q_dim] = attention of q: [n, q_dim] over what each row's sequence holds. A store may attend
  // for some rows apart first (prompt rows in tiles): attend_apart does those and returns whether it ran,
  // so that a profile times it as a stage of its own; attend then does the rest. out16: [n, q_dim] where the
  // output may go in f16 as well (nullptr: not asked); attend returns whether out16 holds every row's.
  virtual bool attend_apart(int64_t /*layer*/, const float* /*q*/, float* /*out*/, int64_t /*n*/,
                            cudaStream_t /*stream*/) {
    return false;
  }
  virtual bool attend(int64_t layer, const float* q, float* out, __half* out16, int64_t n, cudaStream_t stream) = 0;
};

// Rows per matmul call of a batch-invariant forward, by default: every call has this shape, so cuBLAS
// runs one algorithm for it and a row's result cannot depend on how many rows the step holds or where it
// lies.
inline constexpr int64_t kInvariantRows = 64;

// y = x · Wᵀ (+ bias) over n = args.n_tokens rows as calls of exactly `rows` rows, the last padded with
// whatever x holds there (padding rows of y and of norm.out are overwritten): x, y and norm.out hold n
// rounded up to a multiple of `rows`; args.gemm serves `rows` tokens (more than kGemvMaxTokens). With
// `first` and `count`, the calls cover rows [first, first + count) of args alone, the last padded likewise;
// `dequantized` as MatmulArgs::weight_dequantized for the first call.
void matmul_invariant(const cuda::MatmulArgs& args, int64_t rows = kInvariantRows, int64_t first = 0,
                      int64_t count = -1, bool dequantized = false);

// Consecutive rows of one kind in a batched step: prompt rows or the others (CudaForward::run_layers).
struct RowRun {
  int64_t start = 0, count = 0;
  bool prompt = false;
};

// The persistent decode step's shapes for a model of config c (int8 weights in groups of group_size; 0: f16).
cuda::PersistentShape persistent_shape(const ModelConfig& c, int group_size);

// One sequence's contiguous cache, as the persistent decode step reads and writes it: k and v
// [n_layers, n_kv_heads, n_ctx, head_dim] of dtype.
struct ContiguousCacheView {
  void* k = nullptr;
  void* v = nullptr;
  int64_t n_ctx = 0;
  cuda::KvDType dtype = cuda::KvDType::F16;
};

struct CudaForwardOptions {
  int64_t max_tokens = 512;   // rows per call
  // Rows of many sequences, each at its own position; every row's result is bit for bit the same whatever
  // the other rows of the call (matmul_invariant: no GEMV, cuBLAS at one shape). Else the rows are
  // consecutive positions of one sequence, and up to kGemvMaxTokens rows take the GEMV kernels.
  bool batched = false;
  int64_t invariant_rows = kInvariantRows;  // batched: rows per matmul call
  // Batched: rows per matmul call of prompt rows (0: invariant_rows). More rows read the weights fewer times
  // for a long prompt chunk, and a row's kind, not its step, picks its calls, so rows stay alike whatever
  // the step. Taken only by pre-norm models on one GPU (their residual products wait for the next norm, so
  // a call's padding rows, which may be the next run's rows, add nothing to the residual).
  int64_t prompt_rows = 0;
  int64_t input_ints = 0;         // device int32 inputs the caller stages (inputs())
  size_t attention_floats = 0;    // scratch for the caller's attention (attention_scratch())
  TensorCallback on_tensor;       // optional debugging hook: copies each named intermediate to the host
  std::shared_ptr<StageTimer> stage_timer;
  // One sequence's decode steps may run every layer in one persistent kernel (run_layers_persistent) when the
  // model allows it: its table of layers and scratch join the workspace.
  bool persistent_decode = false;
  cuda::KvDType kv_dtype = cuda::KvDType::F16;  // the cache the persistent step writes
  cuda::PersistentFeed persistent_feed = cuda::PersistentFeed::Auto;
  // Tensor parallelism: the part of the whole model that the config and weights are, and the communicators
  // that sum the ranks' partial rows (this rank's is shard.rank's). nccl may be set for the whole model
  // too: one rank, the split path run on one GPU.
  TensorShard shard;
  const cuda::NcclGroup* nccl = nullptr;
};

class CudaForward {
 public:
  // Plans the weight copies and the workspace on the current device; allocates nothing until allocate(),
  // so the caller can check that everything fits first. The weights' host views are read until allocate().
  CudaForward(const ModelConfig& config, const Weights& weights, const CudaForwardOptions& options);
  ~CudaForward();
  CudaForward(const CudaForward&) = delete;
  CudaForward& operator=(const CudaForward&) = delete;

  const ModelConfig& config() const { return config_; }
  int64_t max_tokens() const { return max_tokens_; }
  uint64_t weight_bytes() const;
  uint64_t workspace_bytes() const { return ws_bytes_; }
  uint64_t allocated_weight_bytes() const { return w_.storage.bytes(); }
  uint64_t allocated_workspace_bytes() const { return ws_.storage.bytes(); }
  // Copies the weights to the device and allocates the workspace.
  void allocate();

  cudaStream_t stream() const { return stream_.get(); }
  int32_t* inputs() const { return ws_.inputs; }                   // [input_ints]
  float* attention_scratch() const { return ws_.attention; }       // [attention_floats]
  const float* alibi_slopes() const { return w_.alibi_slopes; }    // [n_heads] or nullptr
  float* hidden() const { return ws_.x; }                          // [rows, dim] the residual stream
  float* spare_rows() const { return ws_.ffn_out; }                // [rows, dim], free after run_layers
  const float* logits() const { return ws_.logits; }               // [rows, output_width], after head
  // The cuBLAS handle and workspace of the GEMM path, or nullptr (steps of at most kGemvMaxTokens rows).
  cuda::GemmContext* gemm_context() const { return gemm_.get(); }

  // The residual stream hidden(): [n, dim] after every layer. tokens, positions: device [n], each checked by
  // the caller; positions are consecutive unless batched. runs: the rows by kind, in order, when
  // splits_prompt_rows() (else ignored: every row takes invariant_rows calls).
  void run_layers(const int32_t* tokens, const int32_t* positions, int64_t n, CudaKvStore& kv,
                  const std::vector<RowRun>& runs = {});
  // Whether prompt rows take matmul calls of their own shape (CudaForwardOptions::prompt_rows).
  bool splits_prompt_rows() const { return two_shapes_; }
  // Whether run_layers_persistent can run: asked for, and a pre-norm (RMS) gated model with f16 matrices (or
  // int8 ones of one group size), no biases but the QKV's, shapes cuda::persistent_decode takes, whole on
  // one GPU, without a tensor hook.
  bool persistent_ready() const { return persistent_; }
  // run_layers for one token at positions[0], every layer in one kernel (cuda::persistent_decode).
  void run_layers_persistent(const int32_t* tokens, const int32_t* positions, const ContiguousCacheView& cache);
  // Output norm and LM head (an encoder returns the normed hidden states) into logits(): hidden: [rows, dim]
  // (rows of hidden() or spare_rows()).
  void head(const float* hidden, int64_t rows);
  // After head: the k best logits of each of the first n_rows rows of logits() (a vocabulary of at most 2^24),
  // laid out in the attention scratch as top_logits_view reads them (top_logits_words(n_rows, k) words).
  void top_logits(int64_t n_rows, int64_t k);

  // Whether the one-token GEMVs of the steps launched from now on may stream their weights through shared
  // memory (cuda::MatmulArgs::stream_weights).
  void set_stream_weights(bool on) { stream_weights_ = on; }

  // Stage timing of the next step (kiln bench --profile): true when the stage timer is on; the caller then
  // launches the step without its graph and calls report_stage_times() once it is done.
  bool begin_stage_timing();
  void report_stage_times();

 private:
  struct Workspace {
    cuda::DeviceBuffer storage;
    float *x = nullptr, *xn = nullptr, *qkv = nullptr, *q = nullptr, *k = nullptr, *att = nullptr,
          *attn_proj = nullptr, *up = nullptr, *act = nullptr, *ffn_out = nullptr, *embd = nullptr,
          *logits = nullptr, *attention = nullptr;
    float* parts = nullptr;  // [splits, rows, dim]: a product onto the residual, maybe split over its inputs
    // [rows, max(ffn_dim, q_dim, dim)]: the activation, the attention's output, or a batched input norm's, in
    // f16 when a GEMM reads it so
    __half* act16 = nullptr;
    float* persistent = nullptr;  // the persistent step's scratch, then its table of layers
    int32_t* inputs = nullptr;
    void* gemm = nullptr;
  };

  void plan_workspace(const CudaForwardOptions& options);
  bool persistent_possible(const CudaForwardOptions& options, const Weights& weights) const;
  void upload_persistent_layers();
  void embed(const int32_t* tokens, const int32_t* positions, int64_t n);
  void layer_forward(int64_t layer, int64_t n, CudaKvStore& kv);
  void norm(const float* x, const float* weight, const float* bias, float* y, int64_t n);
  cuda::InputNorm input_norm(const float* weight, const float* bias) const;
  void batched_input_norm(const cuda::InputNorm& norm, const float* x, __half* x16, int64_t n);
  int residual_split_of(const cuda::DeviceMatrix& w) const;
  void add_pending_products(int64_t n);
  void no_pending_products(const char* before) const;
  void matmul(const cuda::DeviceMatrix& w, const float* x, float* y, const float* bias, int64_t n,
              const cuda::InputNorm& norm = {}, const cuda::GatedOutput& gated = {}, const __half* x16 = nullptr);
  bool takes_gemv(int64_t n) const;
  __half* f16_input_for(const cuda::DeviceMatrix& w, int64_t n) const;
  void run_matmul(const cuda::MatmulArgs& a);
  void matmul_into_residual(const cuda::DeviceMatrix& w, const float* in, const __half* in16, const float* bias,
                            int64_t n, const char* stage, int64_t layer);
  // Adds up the ranks' partial rows of a matmul split by columns, in place; nothing without NCCL. The stage
  // before it ends first, so a profile times the all-reduce as a stage of its own.
  void sum_over_ranks(float* device_data, int64_t n, const char* stage_before, int64_t layer);
  void mark_stage(const char* name, int64_t layer);
  void emit(const char* name, int64_t layer, const float* device_data, int64_t n);

  ModelConfig config_;
  TensorShard shard_;
  const cuda::NcclGroup* nccl_;
  int64_t max_tokens_;
  int64_t invariant_rows_;
  size_t attention_floats_;  // the caller's scratch, also top_logits' output
  int64_t rows_;  // workspace rows: max_tokens, rounded up to invariant_rows when batched, and past the runs' calls
  bool batched_;
  int64_t prompt_rows_;
  // Batched steps of a pre-norm model on one GPU may leave the output and down projections' products in
  // parts (split over their inputs where residual_split_of says so) for the next input norm to add;
  // pending_ holds them until then. Taken with two call shapes, or where a split pays.
  bool pending_residual_ = false;
  bool two_shapes_ = false;
  cuda::PendingSum pending_;
  std::vector<RowRun> runs_;  // during run_layers with two shapes: the step's rows by kind
  bool persistent_;
  cuda::PersistentFeed persistent_feed_;
  cuda::KvDType kv_dtype_;
  TensorCallback on_tensor_;
  std::shared_ptr<StageTimer> stage_timer_;
  bool stream_weights_ = true;
  bool timing_ = false;  // this step marks its stage ends on stage_events_
  cuda::EventTimer stage_events_;
  std::vector<std::pair<const char*, int>> stage_names_;  // [marks] each mark's stage and layer
  cuda::CudaStream stream_;
  std::unique_ptr<WeightPlan> plan_;  // until allocate()
  CudaWeights w_;
  std::vector<size_t> ws_offsets_;  // bytes into the workspace, in Workspace's field order
  size_t ws_bytes_ = 0;
  int64_t gemm_tokens_ = 0, gemm_n_in_ = 0, gemm_int8_ = 0;
  size_t gemm_bytes_ = 0;
  Workspace ws_;
  std::unique_ptr<cuda::GemmContext> gemm_;
  std::vector<float> host_copy_;  // on_tensor only
  std::vector<float> alibi_;      // [the whole model's n_heads] host slopes until uploaded
};

// The rotary mode, scale and the like that both KV stores pass to their kernels.
cuda::RotaryMode cuda_rotary_mode(const ModelConfig& config);
float attention_scale_of(const ModelConfig& config);

// The query heads and rotary fields of a rotary + KV store call (RotaryAppendArgs, PagedRotaryStoreArgs).
template <typename RotaryArgs>
void set_rotary(RotaryArgs& a, const ModelConfig& c) {
  a.n_heads = int(c.n_heads);
  a.mode = cuda_rotary_mode(c);
  a.rotary_dim = int(c.rotary_dim);
  a.theta = c.rope_theta;
  a.position_scale = c.rope_scale;
}

// Throws kiln::Error, naming every part and the GPU's free and total bytes, when weights + kv + workspace
// exceed the free memory of the current device. kv_what: "KV cache for N positions", "KV pool of ...".
void check_gpu_memory(int device, uint64_t weights, uint64_t kv, std::string_view kv_what, uint64_t workspace,
                      int64_t rows, std::string_view advice);

// Makes `device` current after checking that it exists; throws kiln::Error naming what to do otherwise.
int select_cuda_device(int device);

}  // namespace kiln
