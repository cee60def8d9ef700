// Picks the next token from logits: penalties over recent tokens, then top-k, top-p, min-p, temperature
// and a draw from an explicit RNG state, so a seed fixes the output. Temperature 0 is greedy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kiln {

struct SamplerParams {
  float temperature = 0.8f;      // 0: greedy (argmax after penalties)
  int top_k = 40;                // 0: off
  float top_p = 0.95f;           // in (0, 1]; 1: off
  float min_p = 0.05f;           // in [0, 1]: drop tokens less likely than min_p times the best; 0: off
  float repeat_penalty = 1.0f;   // > 0; 1: off. Divides positive logits, multiplies negative ones
  float frequency_penalty = 0;   // subtracted once per occurrence in the window
  float presence_penalty = 0;    // subtracted once if present in the window
  int penalty_last_n = 64;       // window of recent tokens the penalties look at; 0: off
  uint64_t seed = 0;

  // Throws kiln::Error naming the first invalid parameter.
  void validate() const;
};

// A small, fast generator with its whole state in one word (xorshift64*), seeded through splitmix64.
struct Rng {
  uint64_t state = 0;
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1)
};

class Sampler {
 public:
  Sampler(const SamplerParams& params, int64_t n_vocab);  // validates

  // logits: [n_vocab], read only (-inf masks a token). Throws kiln::Error for a NaN or +inf logit.
  int32_t sample(const float* logits);
  // The k best logits sample_top needs to draw what sample draws from all of them, or 0 when it needs them
  // all (a penalty on, or top-k off at a temperature above 0).
  int64_t top_needed() const;
  // sample, given only a row's n >= top_needed() best logits (ties to the lower id) in any order: logits[i]
  // is token ids[i]'s; first_invalid: the row's first NaN or +inf logit, or -1. Draws what sample draws.
  int32_t sample_top(const float* logits, const int32_t* ids, size_t n, int32_t first_invalid);
  // Records a token (prompt or generated) for the penalty window.
  void accept(int32_t token);
  // Forgets the recent tokens and re-seeds the RNG.
  void reset();

  const SamplerParams& params() const { return params_; }

  struct Candidate {
    float logit;
    int32_t id;
  };
  // A call's working memory, one per thread and shared by every sampler on it: a sampler itself holds no
  // vocabulary-sized buffer, so that making one (kiln batch makes one a request) touches no fresh pages.
  struct Scratch {
    std::vector<Candidate> candidates;  // [n_vocab]
    std::vector<float> penalized;       // [n_vocab] the logits with the penalties applied (when any are on)
    std::vector<double> probs;          // [n_vocab]
    std::vector<int32_t> counts;        // [n_vocab] occurrences in the window, zero between calls
    std::vector<float> block_max;       // [n_vocab / 16] top-k's block maxima
  };

 private:
  void check_finite(const float* logits) const;
  bool penalizes() const;
  const float* apply_penalties(const float* logits, Scratch& w) const;
  size_t top_k(const float* scores, Scratch& w) const;
  size_t top_p_and_min_p(size_t n, Scratch& w) const;
  int32_t draw(size_t n, Scratch& w);  // from w.candidates' k best, sorted

  SamplerParams params_;
  int64_t n_vocab_;
  Rng rng_;
  std::vector<int32_t> recent_;  // [penalty_last_n] ring buffer
  size_t recent_next_ = 0;
  size_t recent_size_ = 0;
};

}  // namespace kiln
