#include "engine/tensor_parallel_backend.h"

#include <algorithm>
#include <thread>

#include "engine/error.h"
#include "engine/host_communicator.h"
#include "engine/kiln_file.h"

namespace kiln {

TensorParallelBackend::TensorParallelBackend(const ModelConfig& config, std::vector<Rank> ranks, int64_t chunk_rows)
    : config_(config),
      ranks_(std::move(ranks)),
      chunk_rows_(chunk_rows),
      rank_logits_(ranks_.size()),
      threads_(int(ranks_.size())) {}

void TensorParallelBackend::reset() {
  for (Rank& r : ranks_) r.backend->reset();
}

void TensorParallelBackend::forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                                    bool all_logits) {
  // Every position's logits come in chunks, so a long prompt needs no rank buffer as large as the caller's.
  if (logits == nullptr || !all_logits || !config_.lm_head) {
    forward_ranks(tokens, n_tokens, first_position, logits, all_logits);
    return;
  }
  KILN_CHECK(tokens != nullptr && n_tokens >= 1, "forward needs at least one token");
  for (int64_t start = 0; start < n_tokens; start += chunk_rows_) {
    const int64_t n = std::min(chunk_rows_, n_tokens - start);
    forward_ranks(tokens + start, n, first_position + start, logits + start * config_.n_vocab, true);
  }
}

void TensorParallelBackend::forward_ranks(const int32_t* tokens, int64_t n_tokens, int64_t first_position,
                                          float* logits, bool all_logits) {
  const int64_t rows = logits == nullptr ? 0 : all_logits ? n_tokens : 1;
  for (size_t r = 0; r < ranks_.size(); ++r)
    rank_logits_[r].resize(std::max(rank_logits_[r].size(), size_t(rows * ranks_[r].backend->config().output_width())));
  // Each rank checks the same arguments the same way, before its first collective call.
  threads_.run([&](int r) {
    float* out = logits == nullptr ? nullptr : rank_logits_[size_t(r)].data();
    ranks_[size_t(r)].backend->forward(tokens, n_tokens, first_position, out, all_logits);
  });
  if (rows == 0) return;
  if (!config_.lm_head) {  // an encoder's hidden states: every rank holds all of them
    std::copy_n(rank_logits_[0].data(), rows * config_.dim, logits);
    return;
  }
  for (size_t r = 0; r < ranks_.size(); ++r) {
    const int64_t width = ranks_[r].backend->config().n_vocab, begin = ranks_[r].shard.vocab_begin;
    for (int64_t row = 0; row < rows; ++row)
      std::copy_n(rank_logits_[r].data() + row * width, width, logits + row * config_.n_vocab + begin);
  }
}

std::unique_ptr<Backend> make_cpu_tensor_parallel_backend(const ModelConfig& config, const Weights& weights,
                                                          const BackendOptions& options, int size) {
  KILN_CHECK(size >= 1 && size <= 64, "the tensor-parallel size {} is outside [1, 64]", size);
  if (size == 1) return make_cpu_backend(config, weights, options);
  const int cores = options.n_threads > 0 ? options.n_threads : int(std::max(1u, std::thread::hardware_concurrency()));
  auto comms = make_host_communicators(size);
  std::vector<TensorParallelBackend::Rank> ranks(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) {
    TensorParallelBackend::Rank& rank = ranks[size_t(r)];
    rank.shard = plan_shard(config, weights, r, size);
    rank.shard.comm = comms[size_t(r)].get();
    rank.communicator = std::shared_ptr<Communicator>(std::move(comms[size_t(r)]));
    rank.weights = shard_weights(config, weights, rank.shard);
    BackendOptions o = options;
    o.shard = rank.shard;
    o.n_threads = std::max(1, cores / size);
    if (r > 0) {  // the debugging hooks see rank 0's shard
      o.on_tensor = nullptr;
      o.stage_timer = nullptr;
    }
    rank.backend = make_cpu_backend(shard_config(config, rank.shard), rank.weights.weights, o);
  }
  const int64_t chunk_rows = std::min(options.max_batch, ranks[0].backend->n_ctx());
  return std::make_unique<TensorParallelBackend>(config, std::move(ranks), chunk_rows);
}

std::unique_ptr<Backend> make_cpu_tensor_parallel_backend(const KilnFile& file, const BackendOptions& options,
                                                          int size) {
  return make_cpu_tensor_parallel_backend(file.config(), bind_weights(file), options, size);
}

}  // namespace kiln
