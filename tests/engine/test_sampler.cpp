// The sampler against a naive reference of the same pipeline (penalties, top-k, top-p, min-p,
// temperature) and statistical checks of its draws with fixed seeds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "engine/error.h"
#include "engine/sampler.h"

namespace kiln {
namespace {

SamplerParams plain(float temperature, uint64_t seed = 1) {
  SamplerParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1;
  p.min_p = 0;
  p.seed = seed;
  return p;
}

// The probability of every token after the filters, written the obvious way (no penalties).
std::vector<double> reference_distribution(const std::vector<float>& logits, const SamplerParams& p) {
  const size_t n = logits.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  size_t keep = p.top_k > 0 ? std::min(n, size_t(p.top_k)) : n;
  auto softmax = [&](size_t count, double t) {
    std::vector<double> probs(count);
    double total = 0;
    for (size_t i = 0; i < count; ++i) total += probs[i] = std::exp(double(logits[order[i]]) / t);
    for (double& x : probs) x /= total;
    return probs;
  };
  std::vector<double> probs = softmax(keep, 1.0);
  double cumulative = 0;
  for (size_t i = 0; i < keep && p.top_p < 1; ++i) {
    cumulative += probs[i];
    if (cumulative >= p.top_p) {
      keep = i + 1;
      break;
    }
  }
  size_t min_keep = 1;
  while (min_keep < keep && probs[min_keep] >= p.min_p * probs[0]) ++min_keep;
  keep = min_keep;
  probs = softmax(keep, p.temperature);
  std::vector<double> out(n, 0.0);
  for (size_t i = 0; i < keep; ++i) out[order[i]] = probs[i];
  return out;
}

std::vector<int> histogram(Sampler& sampler, const std::vector<float>& logits, int draws) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[size_t(sampler.sample(logits.data()))];
  return counts;
}

// Pearson's chi-square over tokens with nonzero expected probability; tokens with zero must never appear.
double chi_square(const std::vector<int>& counts, const std::vector<double>& probs, int draws) {
  double chi2 = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (probs[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " should be filtered out";
      continue;
    }
    const double expected = probs[i] * draws;
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  return chi2;
}

TEST(Sampler, DefaultsAreTheCommonOnes) {
  const SamplerParams p;
  EXPECT_FLOAT_EQ(p.temperature, 0.8f);
  EXPECT_EQ(p.top_k, 40);
  EXPECT_FLOAT_EQ(p.top_p, 0.95f);
  EXPECT_FLOAT_EQ(p.min_p, 0.05f);
  EXPECT_FLOAT_EQ(p.repeat_penalty, 1.0f);
  EXPECT_EQ(p.penalty_last_n, 64);
  EXPECT_NO_THROW(p.validate());
}

TEST(Sampler, RejectsInvalidParameters) {
  auto invalid = [](auto change) {
    SamplerParams p;
    change(p);
    EXPECT_THROW(p.validate(), Error);
    EXPECT_THROW(Sampler(p, 10), Error);
  };
  invalid([](SamplerParams& p) { p.temperature = -0.1f; });
  invalid([](SamplerParams& p) { p.temperature = NAN; });
  invalid([](SamplerParams& p) { p.top_k = -1; });
  invalid([](SamplerParams& p) { p.top_p = 0; });
  invalid([](SamplerParams& p) { p.top_p = 1.5f; });
  invalid([](SamplerParams& p) { p.min_p = -0.1f; });
  invalid([](SamplerParams& p) { p.min_p = 2; });
  invalid([](SamplerParams& p) { p.repeat_penalty = 0; });
  invalid([](SamplerParams& p) { p.frequency_penalty = INFINITY; });
  invalid([](SamplerParams& p) { p.presence_penalty = NAN; });
  invalid([](SamplerParams& p) { p.penalty_last_n = -1; });
  EXPECT_THROW(Sampler(SamplerParams{}, 0), Error);
  Sampler s(SamplerParams{}, 4);
  EXPECT_THROW(s.accept(4), Error);
  EXPECT_THROW(s.accept(-1), Error);
  const float nan_logits[] = {1, NAN, 0, 0};
  EXPECT_THROW(s.sample(nan_logits), Error);
}

TEST(Sampler, TemperatureZeroIsArgmax) {
  Sampler s(plain(0), 5);
  const float logits[] = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f};
  EXPECT_EQ(s.sample(logits), 1);  // ties go to the lower id
  const float masked[] = {-INFINITY, -INFINITY, -3.0f, -INFINITY, -INFINITY};
  EXPECT_EQ(s.sample(masked), 2);
}

TEST(Sampler, TopKOneEqualsGreedy) {
  SamplerParams p;  // every default filter on, plus top-k 1
  p.top_k = 1;
  p.seed = 7;
  Sampler sampler(p, 50);
  Sampler greedy(plain(0), 50);
  Rng rng(99);
  std::vector<float> logits(50);
  for (int trial = 0; trial < 200; ++trial) {
    for (float& x : logits) x = float(rng.uniform() * 10 - 5);
    EXPECT_EQ(sampler.sample(logits.data()), greedy.sample(logits.data()));
  }
}

TEST(Sampler, SameSeedSameTokens) {
  SamplerParams p;
  p.top_k = 0;
  p.min_p = 0;
  p.top_p = 1;
  p.seed = 1234;
  std::vector<float> logits(64);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(std::sin(double(i))) * 2;
  Sampler a(p, 64), b(p, 64);
  std::vector<int32_t> first;
  for (int i = 0; i < 300; ++i) {
    first.push_back(a.sample(logits.data()));
    EXPECT_EQ(first.back(), b.sample(logits.data()));
  }
  a.reset();  // re-seeds: the same sequence again
  for (int i = 0; i < 300; ++i) EXPECT_EQ(a.sample(logits.data()), first[size_t(i)]);
  p.seed = 1235;
  Sampler c(p, 64);
  int same = 0;
  for (int i = 0; i < 300; ++i) same += c.sample(logits.data()) == first[size_t(i)];
  EXPECT_LT(same, 100);
}

TEST(Sampler, TopPExcludesTheTail) {
  // Probabilities 0.5, 0.3, 0.15, 0.05: top-p 0.75 keeps the first two, renormalised to 5/8 and 3/8.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplerParams p = plain(1, 3);
  p.top_p = 0.75f;
  Sampler s(p, 4);
  const int draws = 20000;
  const std::vector<int> counts = histogram(s, logits, draws);
  const std::vector<double> expected = reference_distribution(logits, p);
  EXPECT_NEAR(expected[0], 0.625, 1e-6);
  EXPECT_EQ(expected[2], 0.0);
  EXPECT_LT(chi_square(counts, expected, draws), 10.83);  // 1 degree of freedom, p = 0.001
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  // min-p 0.1 of the best 0.6 drops everything under 0.06: only the last token.
  const std::vector<float> logits = {std::log(0.6f), std::log(0.3f), std::log(0.07f), std::log(0.03f)};
  SamplerParams p = plain(1, 5);
  p.min_p = 0.1f;
  Sampler s(p, 4);
  const int draws = 20000;
  const std::vector<int> counts = histogram(s, logits, draws);
  EXPECT_EQ(counts[3], 0);
  EXPECT_GT(counts[2], 0);
  EXPECT_LT(chi_square(counts, reference_distribution(logits, p), draws), 13.82);  // 2 dof, p = 0.001
}

// Every filter at once, with a temperature, on 32 tokens: the draws follow the naive reference.
TEST(Sampler, FrequenciesMatchTheReference) {
  Rng rng(2024);
  std::vector<float> logits(32);
  for (float& x : logits) x = float(rng.uniform() * 6 - 3);
  for (const float temperature : {0.5f, 1.0f, 1.7f}) {
    SamplerParams p = plain(temperature, 11);
    p.top_k = 12;
    p.top_p = 0.9f;
    p.min_p = 0.05f;
    Sampler s(p, 32);
    const int draws = 40000;
    const std::vector<int> counts = histogram(s, logits, draws);
    const std::vector<double> expected = reference_distribution(logits, p);
    const auto kept = std::count_if(expected.begin(), expected.end(), [](double x) { return x > 0; });
    ASSERT_GE(kept, 3) << "the case should keep several tokens";
    // Critical chi-square values at p = 0.001 for up to 11 degrees of freedom.
    const double critical[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59, 31.26};
    EXPECT_LT(chi_square(counts, expected, draws), critical[kept - 1]) << "temperature " << temperature;
  }
}

// Samplers share their thread's working memory: interleaved, with penalties and vocabularies of different
// sizes, each draws what it draws alone, on this thread or another.
TEST(Sampler, InterleavedSamplersDrawWhatEachDrawsAlone) {
  SamplerParams p;
  p.repeat_penalty = 1.3f;
  p.frequency_penalty = 0.2f;
  p.presence_penalty = 0.1f;
  p.penalty_last_n = 8;
  p.seed = 7;
  std::vector<float> logits(300);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(std::sin(double(i) * 0.37)) * 3;
  // Each sampler's draws alone, feeding back what it drew.
  auto alone = [&](int64_t n_vocab, uint64_t seed) {
    SamplerParams q = p;
    q.seed = seed;
    Sampler s(q, n_vocab);
    std::vector<int32_t> drawn;
    for (int i = 0; i < 50; ++i) {
      drawn.push_back(s.sample(logits.data()));
      s.accept(drawn.back());
    }
    return drawn;
  };
  const std::vector<int32_t> want_small = alone(40, 1), want_large = alone(300, 2);
  std::vector<int32_t> other_thread;
  std::thread([&] { other_thread = alone(40, 1); }).join();
  EXPECT_EQ(other_thread, want_small);
  SamplerParams q = p;
  q.seed = 1;
  Sampler small(q, 40);
  q.seed = 2;
  Sampler large(q, 300);
  for (int i = 0; i < 50; ++i) {
    const int32_t a = small.sample(logits.data()), b = large.sample(logits.data());
    ASSERT_EQ(a, want_small[size_t(i)]) << "draw " << i;
    ASSERT_EQ(b, want_large[size_t(i)]) << "draw " << i;
    small.accept(a);
    large.accept(b);
  }
}

TEST(Sampler, PenaltiesFollowTheRecentWindow) {
  const float logits[] = {3.0f, 2.0f, -1.0f, 0.5f};
  {
    SamplerParams p = plain(0);
    p.repeat_penalty = 2;
    Sampler s(p, 4);
    EXPECT_EQ(s.sample(logits), 0);
    s.accept(0);  // 3.0 -> 1.5, below token 1
    EXPECT_EQ(s.sample(logits), 1);
    s.accept(1);  // 2.0 -> 1.0, below 1.5
    EXPECT_EQ(s.sample(logits), 0);
  }
  {
    // A negative logit is multiplied: -1 * 2 = -2 falls below -1.5.
    SamplerParams p = plain(0);
    p.repeat_penalty = 2;
    Sampler s(p, 2);
    const float negative[] = {-1.0f, -1.5f};
    s.accept(0);
    EXPECT_EQ(s.sample(negative), 1);
  }
  {
    // A penalty below 1 rewards repeats: 0.5 / 0.1 = 5 beats 3.
    SamplerParams p = plain(0);
    p.repeat_penalty = 0.1f;
    Sampler s(p, 4);
    s.accept(3);
    EXPECT_EQ(s.sample(logits), 3);
  }
  {
    // Frequency counts occurrences, presence counts once.
    SamplerParams p = plain(0);
    p.frequency_penalty = 0.4f;
    p.presence_penalty = 0.5f;
    Sampler s(p, 4);
    s.accept(0);
    EXPECT_EQ(s.sample(logits), 0);  // 3 - 0.4 - 0.5 = 2.1 > 2
    s.accept(0);
    EXPECT_EQ(s.sample(logits), 1);  // 3 - 0.8 - 0.5 = 1.7 < 2
  }
  {
    // Only the last penalty_last_n tokens count.
    SamplerParams p = plain(0);
    p.repeat_penalty = 4;
    p.penalty_last_n = 2;
    Sampler s(p, 4);
    s.accept(0);
    EXPECT_EQ(s.sample(logits), 1);  // 0.75 < 2
    s.accept(3);
    s.accept(3);  // token 0 left the window
    EXPECT_EQ(s.sample(logits), 0);
  }
}

TEST(Sampler, MaskedTokensAreNeverDrawn) {
  std::vector<float> logits(16, 0.0f);
  for (size_t i = 0; i < logits.size(); i += 2) logits[i] = -INFINITY;
  Sampler s(plain(1.5f, 9), 16);
  const std::vector<int> counts = histogram(s, logits, 4000);
  for (size_t i = 0; i < counts.size(); ++i) {
    if (i % 2 == 0) EXPECT_EQ(counts[i], 0);
    else EXPECT_GT(counts[i], 350);  // 500 expected
  }
}

// Logits of a large vocabulary: pattern 0 has 40 levels (many ties), 1 distinct scores, 2 all but every
// 997th masked (fewer finite scores than some k); every 7th from the 3rd is masked in all three.
std::vector<float> test_logits(int64_t n_vocab, int pattern) {
  Rng values(77 + uint64_t(pattern));
  std::vector<float> logits(static_cast<size_t>(n_vocab));
  for (float& x : logits)
    x = pattern == 0 ? float(std::floor(values.uniform() * 40) * 0.25 - 5) : float(values.uniform() * 20 - 10);
  for (size_t i = 3; i < logits.size(); i += 7) logits[i] = -INFINITY;
  if (pattern == 2)
    for (size_t i = 0; i < logits.size(); ++i)
      if (i % 997 != 0) logits[i] = -INFINITY;
  return logits;
}

// The tokens by logit, ties to the lower id (a stable sort of the ids).
std::vector<size_t> best_first(const std::vector<float>& logits) {
  std::vector<size_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  return order;
}

// Top-k passes most scores over on their blocks' maxima: it must draw what a full sort of the k best draws,
// with many ties, with distinct scores, with a vocabulary that is not whole blocks, and with most tokens
// masked (so that -inf scores reach its threshold).
TEST(Sampler, TopKDrawsWhatAFullSortDraws) {
  for (const int64_t n_vocab : {int64_t(5000), int64_t(32003)})
    for (const int pattern : {0, 1, 2}) {
      const std::vector<float> logits = test_logits(n_vocab, pattern);
      const std::vector<size_t> order = best_first(logits);
      for (const int k : {1, 40, 333}) {
        SCOPED_TRACE(testing::Message() << "vocabulary " << n_vocab << ", pattern " << pattern << ", top-k " << k);
        SamplerParams p;
        p.top_k = k;
        p.seed = 123;
        // the same sampler with top-k off, given the k best and -inf for the rest (which min-p drops)
        std::vector<float> only_best(logits.size(), -INFINITY);
        for (int i = 0; i < k; ++i) only_best[order[size_t(i)]] = logits[order[size_t(i)]];
        SamplerParams all = p;
        all.top_k = 0;
        Sampler with_k(p, n_vocab), sorted(all, n_vocab);
        for (int draw = 0; draw < 100; ++draw)
          ASSERT_EQ(with_k.sample(logits.data()), sorted.sample(only_best.data())) << "draw " << draw;
      }
    }
}

// Given only a row's best logits, in any order and more of them than it needs, a sampler draws what it
// draws from the whole row: greedy, top-k with top-p and min-p, top-k larger than the vocabulary.
TEST(Sampler, SampleTopDrawsWhatSampleDraws) {
  for (const int64_t n_vocab : {int64_t(300), int64_t(32003)})
    for (const int pattern : {0, 1, 2}) {
      const std::vector<float> logits = test_logits(n_vocab, pattern);
      const std::vector<size_t> order = best_first(logits);
      for (const auto& [temperature, k, top_p] : {std::tuple{0.0f, 40, 0.95f}, std::tuple{0.8f, 1, 0.95f},
                                                   std::tuple{0.8f, 40, 0.95f}, std::tuple{1.3f, 333, 1.0f}}) {
        SamplerParams p;
        p.temperature = temperature;
        p.top_k = k;
        p.top_p = top_p;
        p.seed = 99;
        Sampler whole(p, n_vocab), top(p, n_vocab);
        const int64_t needed = top.top_needed();
        ASSERT_EQ(needed, temperature == 0 ? 1 : std::min<int64_t>(k, n_vocab));
        for (const int64_t extra : {int64_t(0), int64_t(17)}) {
          SCOPED_TRACE(testing::Message() << "vocabulary " << n_vocab << ", pattern " << pattern << ", temperature "
                                          << temperature << ", top-k " << k << ", " << extra << " extra");
          const auto n = size_t(std::min(n_vocab, needed + extra));
          std::vector<float> best_logits;
          std::vector<int32_t> best_ids;
          for (size_t i = n; i-- > 0;) {  // worst first: the order given must not matter
            best_ids.push_back(int32_t(order[i]));
            best_logits.push_back(logits[order[i]]);
          }
          for (int draw = 0; draw < 100; ++draw)
            ASSERT_EQ(top.sample_top(best_logits.data(), best_ids.data(), n, -1), whole.sample(logits.data()))
                << "draw " << draw;
        }
      }
    }
}

TEST(Sampler, SampleTopNeedsEnoughLogitsAndNoPenalty) {
  SamplerParams p;  // top-k 40
  Sampler s(p, 100);
  const std::vector<float> logits(40, 1.0f);
  std::vector<int32_t> ids(40);
  std::iota(ids.begin(), ids.end(), 0);
  EXPECT_THROW((void)s.sample_top(logits.data(), ids.data(), 39, -1), Error);
  ids[5] = 100;
  EXPECT_THROW((void)s.sample_top(logits.data(), ids.data(), 40, -1), Error);
  ids[5] = 5;
  try {
    (void)s.sample_top(logits.data(), ids.data(), 40, 7);
    FAIL() << "a row with an invalid logit was sampled";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("logit 7 is NaN or inf"), std::string::npos) << e.what();
  }
  p.top_k = 0;
  EXPECT_EQ(Sampler(p, 100).top_needed(), 0);  // the whole row
  p.top_k = 40;
  p.repeat_penalty = 1.1f;
  EXPECT_EQ(Sampler(p, 100).top_needed(), 0);
  p.penalty_last_n = 0;  // no window: no penalty
  EXPECT_EQ(Sampler(p, 100).top_needed(), 40);
  p.temperature = 0;
  EXPECT_EQ(Sampler(p, 100).top_needed(), 1);
}

TEST(Sampler, RejectsNanAndInfiniteLogitsNamingTheFirst) {
  std::vector<float> logits(100, 0.5f);
  logits[60] = INFINITY;
  logits[70] = NAN;
  Sampler s(SamplerParams{}, 100);
  try {
    (void)s.sample(logits.data());
    FAIL() << "an infinite logit was sampled";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("logit 60 is inf"), std::string::npos) << e.what();
  }
  logits[60] = -INFINITY;  // a masked token is fine; the nan is not
  EXPECT_THROW((void)s.sample(logits.data()), Error);
}

}  // namespace
}  // namespace kiln
