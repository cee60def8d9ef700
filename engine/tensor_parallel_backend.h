// One model split across ranks (engine/tensor_shard.h): a backend per rank, built from the rank's shard of
// the config and weights, and one thread per rank driving them together. Every step runs on every rank;
// each rank's LM head gives the logits of its slice of the vocabulary, gathered here into the caller's
// rows. Ranks are threads of this process rather than processes: they share the mapped file, the
// tokenizer and the sampler, and nothing has to be launched or torn down beside kiln.
#pragma once

#include <memory>
#include <vector>

#include "engine/backend.h"
#include "engine/rank_threads.h"
#include "engine/tensor_shard.h"

namespace kiln {

class TensorParallelBackend final : public Backend {
 public:
  struct Rank {
    ShardedWeights weights;              // what the backend reads (empty where it copied them to a GPU)
    std::shared_ptr<void> communicator;  // what the backend's sums go through (host or NCCL)
    std::unique_ptr<Backend> backend;    // config: the rank's shard config; destroyed before the above
    TensorShard shard;
  };

  // chunk_rows: rows of logits gathered at a time when every position's are asked for.
  TensorParallelBackend(const ModelConfig& config, std::vector<Rank> ranks, int64_t chunk_rows);

  std::string_view name() const override { return ranks_[0].backend->name(); }
  const ModelConfig& config() const override { return config_; }
  int64_t n_ctx() const override { return ranks_[0].backend->n_ctx(); }
  int64_t n_past() const override { return ranks_[0].backend->n_past(); }
  const Backend& rank_backend(int rank) const { return *ranks_[size_t(rank)].backend; }
  void forward(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
               bool all_logits) override;
  void reset() override;

 private:
  // One call on every rank; rows of each rank's logits then copied into logits: [rows, output_width].
  void forward_ranks(const int32_t* tokens, int64_t n_tokens, int64_t first_position, float* logits,
                     bool all_logits);

  ModelConfig config_;
  std::vector<Rank> ranks_;
  int64_t chunk_rows_;
  std::vector<std::vector<float>> rank_logits_;  // [rank] its rows of logits, kept between steps
  RankThreads threads_;
};

// The CPU backend split over `size` ranks, each with its share of the threads (BackendOptions::n_threads,
// or all cores). size 1 is the plain CPU backend. Throws kiln::Error when the model cannot be split so.
// The weights' views (the file) must outlive the backend.
[[nodiscard]] std::unique_ptr<Backend> make_cpu_tensor_parallel_backend(const ModelConfig& config,
                                                                        const Weights& weights,
                                                                        const BackendOptions& options, int size);
[[nodiscard]] std::unique_ptr<Backend> make_cpu_tensor_parallel_backend(const KilnFile& file,
                                                                        const BackendOptions& options, int size);

}  // namespace kiln
