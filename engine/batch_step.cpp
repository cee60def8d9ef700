#include "engine/batch_step.h"

#include "engine/error.h"

namespace kiln {

BatchStep::BatchStep(int64_t max_sequences, int64_t max_step_tokens)
    : max_step_tokens_(max_step_tokens),
      tokens_(size_t(max_step_tokens)),
      row_seq_(size_t(max_step_tokens)),
      row_position_(size_t(max_step_tokens)),
      row_prompt_(size_t(max_step_tokens)),
      seen_in_step_(size_t(max_sequences), -1) {}

void BatchStep::check(const KvBlockTable& table, int64_t n_vocab, const BatchToken* tokens, int64_t n_tokens,
                      const int32_t* logit_rows, int64_t n_logit_rows, const float* logits) {
  KILN_CHECK(tokens != nullptr && n_tokens >= 1 && n_tokens <= max_step_tokens_,
             "a batch step takes 1 to {} tokens, not {}", max_step_tokens_, n_tokens);
  KILN_CHECK(n_logit_rows >= 0 && n_logit_rows <= n_tokens && (n_logit_rows == 0 || (logit_rows && logits)),
             "a batch step of {} tokens cannot return logits for {} rows", n_tokens, n_logit_rows);
  ++step_;
  for (int64_t r = 0; r < n_tokens; ++r) {
    const BatchToken& t = tokens[r];
    KILN_CHECK(t.seq >= 0 && t.seq < table.max_sequences(), "row {} is of sequence {}, outside the slots [0, {})", r,
               t.seq, table.max_sequences());
    KILN_CHECK(t.token >= 0 && t.token < n_vocab, "token {} at row {} is outside the vocabulary of {}", t.token, r,
               n_vocab);
    if (seen_in_step_[size_t(t.seq)] != step_) {
      KILN_CHECK(t.position == table.length(t.seq),
                 "row {} puts sequence {} at position {}, but it holds {} positions: its next row must follow them",
                 r, t.seq, t.position, table.length(t.seq));
      seen_in_step_[size_t(t.seq)] = step_;
    } else {
      KILN_CHECK(row_seq_[size_t(r - 1)] == t.seq,
                 "the rows of sequence {} are not consecutive (row {}): give each sequence's rows together", t.seq, r);
      KILN_CHECK(t.position == row_position_[size_t(r - 1)] + 1,
                 "row {} puts sequence {} at position {} after position {}: its rows must be in position order", r,
                 t.seq, t.position, row_position_[size_t(r - 1)]);
    }
    KILN_CHECK(t.position < table.reserved_positions(t.seq),
               "row {} puts sequence {} at position {}, past the {} positions reserved for it: reserve first", r,
               t.seq, t.position, table.reserved_positions(t.seq));
    tokens_[size_t(r)] = t.token;
    row_seq_[size_t(r)] = t.seq;
    row_position_[size_t(r)] = t.position;
    row_prompt_[size_t(r)] = t.prompt ? 1 : 0;
  }
  for (int64_t i = 0; i < n_logit_rows; ++i)
    KILN_CHECK(logit_rows[i] >= 0 && logit_rows[i] < n_tokens, "logit row {} is outside the step's {} rows",
               logit_rows[i], n_tokens);
}

void BatchStep::grow(KvBlockTable& table, int64_t n_tokens) const {
  for (int64_t r = 0; r < n_tokens; ++r)
    if (r + 1 == n_tokens || row_seq_[size_t(r + 1)] != row_seq_[size_t(r)])
      table.grow(row_seq_[size_t(r)], row_position_[size_t(r)] + 1);
}

}  // namespace kiln
