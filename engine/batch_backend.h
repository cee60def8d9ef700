// The batched side of a backend: one forward step over tokens of many independent sequences, with a
// paged KV cache (fixed-size blocks of positions, taken from one pool as a sequence grows and returned
// when it is released). Matmuls run over all rows of the step at once; attention reads each token's own
// sequence only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/model_config.h"
#include "engine/top_logits.h"

namespace kiln {

// One row of a step: the next token of sequence `seq` at `position` (the number of positions the
// sequence already holds, plus its earlier rows in this step). `prompt` marks a token given rather than
// sampled: a backend may attend for a sequence's prompt rows of a step together (the CUDA one does, on the
// tensor cores, which rounds otherwise than its one-row path), so a row's result depends on all four.
struct BatchToken {
  int32_t token = 0;
  int32_t seq = 0;
  int32_t position = 0;
  bool prompt = false;
};

struct BatchBackendOptions {
  int64_t n_ctx = 0;                  // positions one sequence may hold; 0: the model's, at most 4096
  int64_t max_sequences = 64;         // sequence slots [0, max_sequences)
  int64_t max_step_tokens = 512;      // rows per forward step
  uint64_t kv_bytes = uint64_t(1) << 30;  // the KV block pool (rounded down to whole blocks)
  int n_threads = 0;                  // CPU: <= 0: all cores
};

class BatchBackend {
 public:
  virtual ~BatchBackend() = default;

  virtual std::string_view name() const = 0;  // "CPU", "CUDA"
  virtual const ModelConfig& config() const = 0;
  virtual int64_t n_ctx() const = 0;
  virtual int64_t max_sequences() const = 0;
  virtual int64_t max_step_tokens() const = 0;
  virtual int64_t block_positions() const = 0;  // positions per KV block
  virtual int64_t free_blocks() const = 0;      // blocks neither used nor reserved

  // Sets aside blocks for n_positions positions of sequence seq (counting what it holds), so that a
  // running sequence can never find the pool empty. Returns false, changing nothing, when too few are free;
  // never shrinks a reservation. Throws kiln::Error for a slot out of range or more than n_ctx() positions.
  virtual bool reserve(int32_t seq, int64_t n_positions) = 0;
  // Runs one step. tokens: [n_tokens] (1 to max_step_tokens()); rows of one sequence are consecutive and in
  // position order. logit_rows: [n_logit_rows] indices into tokens, in any order (n_logit_rows <= n_tokens);
  // logits: [n_logit_rows, n_vocab]. A row's logits are bit for bit the same whatever else the step holds
  // (given its sequence's earlier rows alike, prompt flags included),
  // so a sequence decodes alike alone or in a batch. Throws kiln::Error, changing nothing, for a slot out of
  // range, a token outside the vocabulary, a position that leaves a gap or rewinds, rows of a sequence
  // apart, or a position past the reservation.
  virtual void forward(const BatchToken* tokens, int64_t n_tokens, const int32_t* logit_rows,
                       int64_t n_logit_rows, float* logits) = 0;
  // The largest k forward_top takes; 0: it is not offered.
  virtual int64_t max_top_k() const { return 0; }
  // forward, each asked row cut down to its k best logits (1 <= k <= max_top_k()), as samplers that look at
  // no others need (Sampler::top_needed): a GPU step copies kilobytes instead of megabytes, and the host
  // sorts k logits rather than the vocabulary. The view is valid until the next call. Throws kiln::Error as
  // forward does, and for a k outside [1, max_top_k()].
  virtual TopLogits forward_top(const BatchToken* /*tokens*/, int64_t /*n_tokens*/, const int32_t* /*logit_rows*/,
                                int64_t /*n_logit_rows*/, int64_t k) {
    throw Error(fmt::format("the {} batch backend returns whole rows of logits, not the {} best", name(), k));
  }
  // Returns the sequence's blocks and reservation to the pool; its slot may be used again.
  virtual void release(int32_t seq) = 0;
  // Host memory for forward's logits: at least n_rows x n_vocab floats, valid until the next call or the
  // backend's end. The CUDA backend's is pinned, so that the logits come off the GPU at full speed (a step
  // of 64 SmolLM2 rows has 12.6 MB of them); any other memory works too.
  virtual float* logits_buffer(int64_t n_rows) {
    const size_t n = logits_buffer_floats(n_rows);
    if (logits_.size() < n) logits_.resize(n);
    return logits_.data();
  }

 protected:
  // What logits_buffer holds for n_rows: a row a sequence slot at least (what a scheduler asks at most), so
  // that the buffer is made once rather than grown as a run's steps return more rows.
  size_t logits_buffer_floats(int64_t n_rows) const {
    return size_t(std::max(n_rows, max_sequences())) * size_t(config().n_vocab);
  }

 private:
  std::vector<float> logits_;
};

class KilnFile;
struct Weights;

[[nodiscard]] std::unique_ptr<BatchBackend> make_cpu_batch_backend(const KilnFile& file,
                                                                   const BatchBackendOptions& options);
// The weights' views must outlive the backend.
[[nodiscard]] std::unique_ptr<BatchBackend> make_cpu_batch_backend(const ModelConfig& config, const Weights& weights,
                                                                   const BatchBackendOptions& options);

}  // namespace kiln
