#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace kiln {
namespace {

constexpr size_t kTopKBlock = 16;  // scores a block of top_k's

// This thread's scratch, grown to n_vocab entries (new counts are zero, as the old ones are between calls).
Sampler::Scratch& scratch_for(int64_t n_vocab) {
  thread_local Sampler::Scratch w;
  const auto n = size_t(n_vocab);
  if (w.candidates.size() < n) {
    w.candidates.resize(n);
    w.penalized.resize(n);
    w.probs.resize(n);
    w.counts.resize(n, 0);
    w.block_max.resize(n / kTopKBlock);
  }
  return w;
}

// The order of candidates: by logit, ties to the lower id, so that no draw depends on a sort's implementation.
bool better(const Sampler::Candidate& a, const Sampler::Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

void SamplerParams::validate() const {
  KILN_CHECK(std::isfinite(temperature) && temperature >= 0, "temperature {} must be >= 0 (0 is greedy)",
             temperature);
  KILN_CHECK(top_k >= 0, "top-k {} must be >= 0 (0 turns it off)", top_k);
  KILN_CHECK(std::isfinite(top_p) && top_p > 0 && top_p <= 1, "top-p {} must be in (0, 1] (1 turns it off)", top_p);
  KILN_CHECK(std::isfinite(min_p) && min_p >= 0 && min_p <= 1, "min-p {} must be in [0, 1] (0 turns it off)", min_p);
  KILN_CHECK(std::isfinite(repeat_penalty) && repeat_penalty > 0, "repeat penalty {} must be > 0 (1 turns it off)",
             repeat_penalty);
  KILN_CHECK(std::isfinite(frequency_penalty), "frequency penalty {} must be a finite number", frequency_penalty);
  KILN_CHECK(std::isfinite(presence_penalty), "presence penalty {} must be a finite number", presence_penalty);
  KILN_CHECK(penalty_last_n >= 0 && penalty_last_n <= (1 << 20),
             "penalty window {} must be in [0, 1048576] (0 turns the penalties off)", penalty_last_n);
}

Rng::Rng(uint64_t seed) : state(splitmix64(seed)) {
  if (state == 0) state = 0x9e3779b97f4a7c15ull;  // xorshift never leaves zero
}

uint64_t Rng::next() {
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return state * 0x2545f4914f6cdd1dull;
}

double Rng::uniform() { return double(next() >> 11) * 0x1.0p-53; }

Sampler::Sampler(const SamplerParams& params, int64_t n_vocab) : params_(params), n_vocab_(n_vocab), rng_(params.seed) {
  params_.validate();
  KILN_CHECK(n_vocab >= 1 && n_vocab <= (int64_t(1) << 24), "vocabulary size {} is invalid", n_vocab);
  recent_.resize(size_t(params_.penalty_last_n));
}

void Sampler::accept(int32_t token) {
  KILN_CHECK(token >= 0 && token < n_vocab_, "token {} is outside the vocabulary of {}", token, n_vocab_);
  if (recent_.empty()) return;  // penalties off
  recent_[recent_next_] = token;
  recent_next_ = (recent_next_ + 1) % recent_.size();
  recent_size_ = std::min(recent_size_ + 1, recent_.size());
}

void Sampler::reset() {
  recent_next_ = 0;
  recent_size_ = 0;
  rng_ = Rng(params_.seed);
}

// Throws for the first NaN or +inf logit. The count without a branch vectorizes; the search for the culprit
// runs only when there is one.
void Sampler::check_finite(const float* logits) const {
  const size_t n = size_t(n_vocab_);
  uint32_t below_infinity = 0;  // n <= 2^24
  for (size_t i = 0; i < n; ++i) below_infinity += logits[i] < INFINITY ? 1 : 0;  // NaN compares false too
  if (below_infinity == n) return;
  for (size_t i = 0; i < n; ++i)
    KILN_CHECK(logits[i] < INFINITY, "logit {} is {}: the model produced invalid output", i, logits[i]);
}

bool Sampler::penalizes() const {
  const SamplerParams& p = params_;
  return !recent_.empty() && (p.repeat_penalty != 1 || p.frequency_penalty != 0 || p.presence_penalty != 0);
}

// The logits the filters see: `logits` itself, or a copy with the recent tokens penalized.
const float* Sampler::apply_penalties(const float* logits, Scratch& w) const {
  const SamplerParams& p = params_;
  if (recent_size_ == 0 || !penalizes()) return logits;
  std::copy_n(logits, n_vocab_, w.penalized.begin());
  for (size_t i = 0; i < recent_size_; ++i) ++w.counts[size_t(recent_[i])];
  for (size_t i = 0; i < recent_size_; ++i) {
    const auto id = size_t(recent_[i]);
    const int32_t count = w.counts[id];
    if (count == 0) continue;  // already penalised
    float& logit = w.penalized[id];
    logit = logit > 0 ? logit / p.repeat_penalty : logit * p.repeat_penalty;
    logit -= float(count) * p.frequency_penalty + p.presence_penalty;
    w.counts[id] = 0;
  }
  return w.penalized.data();
}

// The k best scores into w.candidates, best first (all of them, sorted, when top-k is off). With top-k on, the
// scores go in blocks of 16 and the blocks in k groups: each group holds a score as large as its maximum,
// so k scores reach the least group maximum t, and so does every one of the k best. Only the blocks whose
// maximum reaches t are looked into (a few hundred scores of 32K random logits), the rest passed over on
// their maxima. A heap of the k best kept over all scores took twice as long: early on most scores entered.
size_t Sampler::top_k(const float* scores, Scratch& w) const {
  const auto n = size_t(n_vocab_);
  const size_t k = params_.top_k > 0 ? std::min(n, size_t(params_.top_k)) : n;
  std::vector<Candidate>& candidates = w.candidates;
  const size_t n_blocks = n / kTopKBlock;  // whole blocks; the tail's scores are always candidates
  if (n_blocks < k) {  // top-k off, or a small vocabulary: every score is a candidate
    for (size_t i = 0; i < n; ++i) candidates[i] = {scores[i], int32_t(i)};
    const auto all = candidates.begin() + ptrdiff_t(n);
    if (k == n) std::sort(candidates.begin(), all, better);
    else std::partial_sort(candidates.begin(), candidates.begin() + ptrdiff_t(k), all, better);
    return k;
  }
  std::vector<float>& maxima = w.block_max;
  for (size_t b = 0; b < n_blocks; ++b) {
    const float* x = scores + b * kTopKBlock;
    float lane[4] = {x[0], x[1], x[2], x[3]};  // four independent lanes: the compiler vectorizes them
    for (size_t i = 4; i < kTopKBlock; i += 4)
      for (size_t j = 0; j < 4; ++j) lane[j] = std::max(lane[j], x[i + j]);
    maxima[b] = std::max(std::max(lane[0], lane[1]), std::max(lane[2], lane[3]));
  }
  float t = INFINITY;
  for (size_t g = 0; g < k; ++g) {
    const size_t first = g * n_blocks / k, end = (g + 1) * n_blocks / k;
    t = std::min(t, *std::max_element(maxima.begin() + ptrdiff_t(first), maxima.begin() + ptrdiff_t(end)));
  }
  size_t found = 0;
  auto consider = [&](size_t i) {  // branch-free: written always, kept when it reaches t
    candidates[found] = {scores[i], int32_t(i)};
    found += scores[i] >= t ? 1 : 0;
  };
  for (size_t b = 0; b < n_blocks; ++b)
    if (maxima[b] >= t)
      for (size_t i = b * kTopKBlock; i < (b + 1) * kTopKBlock; ++i) consider(i);
  for (size_t i = n_blocks * kTopKBlock; i < n; ++i) consider(i);
  std::partial_sort(candidates.begin(), candidates.begin() + ptrdiff_t(k), candidates.begin() + ptrdiff_t(found),
                    better);
  return k;
}

// Nucleus: the shortest prefix whose probability (at temperature 1) reaches top_p; then min-p: tokens at
// least min_p times as likely as the best. Both keep at least one token.
size_t Sampler::top_p_and_min_p(size_t n, Scratch& w) const {
  std::vector<double>& probs = w.probs;
  const std::vector<Candidate>& candidates = w.candidates;
  const double max_logit = candidates[0].logit;
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += probs[i] = std::exp(double(candidates[i].logit) - max_logit);
  if (params_.top_p < 1) {
    double cumulative = 0;
    for (size_t i = 0; i < n; ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= params_.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  if (params_.min_p > 0) {
    size_t keep = 1;
    while (keep < n && probs[keep] >= double(params_.min_p)) ++keep;  // probs[0] is 1
    n = keep;
  }
  return n;
}

int32_t Sampler::sample(const float* logits) {
  check_finite(logits);
  Scratch& w = scratch_for(n_vocab_);
  const float* scores = apply_penalties(logits, w);

  if (params_.temperature == 0) {
    size_t best = 0;
    for (size_t i = 1; i < size_t(n_vocab_); ++i)
      if (scores[i] > scores[best]) best = i;
    return int32_t(best);
  }

  return draw(top_k(scores, w), w);
}

int64_t Sampler::top_needed() const {
  if (penalizes()) return 0;
  if (params_.temperature == 0) return 1;
  return params_.top_k > 0 ? std::min<int64_t>(params_.top_k, n_vocab_) : 0;
}

int32_t Sampler::sample_top(const float* logits, const int32_t* ids, size_t n, int32_t first_invalid) {
  KILN_CHECK(first_invalid < 0, "logit {} is NaN or inf: the model produced invalid output", first_invalid);
  const int64_t needed = top_needed();
  KILN_CHECK(needed > 0 && n >= size_t(needed) && n <= size_t(n_vocab_),
             "a sampler that needs {} of the best logits (0: all) cannot draw from {}", needed, n);
  Scratch& w = scratch_for(n_vocab_);
  std::vector<Candidate>& candidates = w.candidates;
  for (size_t i = 0; i < n; ++i) {
    KILN_CHECK(ids[i] >= 0 && ids[i] < n_vocab_, "token {} is outside the vocabulary of {}", ids[i], n_vocab_);
    candidates[i] = {logits[i], ids[i]};
  }
  std::partial_sort(candidates.begin(), candidates.begin() + needed, candidates.begin() + ptrdiff_t(n), better);
  if (params_.temperature == 0) return candidates[0].id;
  return draw(size_t(needed), w);
}

int32_t Sampler::draw(size_t n, Scratch& w) {
  const std::vector<Candidate>& candidates = w.candidates;
  if (candidates[0].logit == -INFINITY) return candidates[0].id;  // every token masked: nothing to weigh
  n = top_p_and_min_p(n, w);

  // temperature, then one draw
  std::vector<double>& probs = w.probs;
  const double inv_t = 1.0 / double(params_.temperature);
  const double max_logit = candidates[0].logit;
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += probs[i] = std::exp((double(candidates[i].logit) - max_logit) * inv_t);
  double target = rng_.uniform() * total;
  for (size_t i = 0; i < n; ++i) {
    target -= probs[i];
    if (target < 0) return candidates[i].id;
  }
  return candidates[n - 1].id;  // rounding left a sliver past the end
}

}  // namespace kiln
