// What every batch backend does first with a step: checks it against the sequences' block table (the
// BatchBackend::forward contract), changing nothing when it is bad, and takes its rows apart into the
// arrays the forward reads.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/batch_backend.h"
#include "engine/paged_kv_cache.h"

namespace kiln {

class BatchStep {
 public:
  BatchStep(int64_t max_sequences, int64_t max_step_tokens);

  // Throws kiln::Error for a step BatchBackend::forward refuses; else fills tokens(), row_seq(),
  // row_position() and row_prompt() with its n_tokens rows. Changes nothing else.
  void check(const KvBlockTable& table, int64_t n_vocab, const BatchToken* tokens, int64_t n_tokens,
             const int32_t* logit_rows, int64_t n_logit_rows, const float* logits);
  // Grows every sequence of the checked step to hold its rows.
  void grow(KvBlockTable& table, int64_t n_tokens) const;

  const int32_t* tokens() const { return tokens_.data(); }              // [n_tokens]
  const int32_t* row_seq() const { return row_seq_.data(); }            // [n_tokens]
  const int32_t* row_position() const { return row_position_.data(); }  // [n_tokens]
  const int32_t* row_prompt() const { return row_prompt_.data(); }      // [n_tokens] 1: a prompt row, else 0

 private:
  int64_t max_step_tokens_;
  std::vector<int32_t> tokens_;        // [max_step_tokens]
  std::vector<int32_t> row_seq_;       // [max_step_tokens]
  std::vector<int32_t> row_position_;  // [max_step_tokens]
  std::vector<int32_t> row_prompt_;    // [max_step_tokens]
  std::vector<int64_t> seen_in_step_;  // [max_sequences] the last step with a row of the sequence
  int64_t step_ = 0;
};

}  // namespace kiln
