#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/simd_ops.h"
#include "kernels/cpu/simd_math.h"
#include "kernels/cpu/attention_impl.h"

namespace kiln {
namespace {

using attention_detail::AttentionJob;

constexpr int kMaxRep = 64;                 // query heads per kv head (the kernel's stack arrays)
constexpr int64_t kMinKeysPerSplit = 256;   // splitting fewer keys costs more than it balances
constexpr int64_t kItemsPerThread = 4;

void check_params(const float* q, const float* k_cache, const float* v_cache, const float* out,
                  const AttentionParams& p) {
  KILN_CHECK(p.n_tokens >= 0 && p.first_position >= 0, "attention: n_tokens {} and first_position {} must be >= 0",
             p.n_tokens, p.first_position);
  KILN_CHECK(p.n_heads > 0 && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0 &&
                 p.n_heads / p.n_kv_heads <= kMaxRep,
             "attention: {} query heads cannot share {} kv heads (a whole multiple, at most {} per kv head)",
             p.n_heads, p.n_kv_heads, kMaxRep);
  KILN_CHECK(p.head_dim > 0, "attention: head_dim is {}", p.head_dim);
  KILN_CHECK(p.kv_stride >= p.first_position + p.n_tokens,
             "attention: the cache holds {} positions per head, but positions up to {} are asked for", p.kv_stride,
             p.first_position + p.n_tokens);
  KILN_CHECK(p.window >= 0, "attention: window is {}", p.window);
  KILN_CHECK(std::isfinite(p.scale), "attention: scale is {}", p.scale);
  KILN_CHECK(p.n_tokens == 0 || (q && k_cache && v_cache && out), "attention: null input or output");
}

// out[t, h] from the n_splits partial softmaxes: rescale each to the largest max, then normalise.
void merge_splits(const AttentionJob& job) {
  const AttentionParams& p = job.p;
  const int hd = p.head_dim;
  for (int64_t th = 0; th < p.n_tokens * p.n_heads; ++th) {
    const float* parts = job.partial + th * job.n_splits * (2 + hd);
    float m = -INFINITY;
    for (int64_t s = 0; s < job.n_splits; ++s)
      if (parts[s * (2 + hd) + 1] > 0) m = std::max(m, parts[s * (2 + hd)]);
    float* o = job.out + th * hd;
    std::fill(o, o + hd, 0.0f);
    float total = 0;
    for (int64_t s = 0; s < job.n_splits; ++s) {
      const float* part = parts + s * (2 + hd);
      if (part[1] <= 0) continue;  // an empty split
      const float w = std::exp(part[0] - m);
      total += w * part[1];
      for (int i = 0; i < hd; ++i) o[i] += w * part[2 + i];
    }
    for (int i = 0; i < hd; ++i) o[i] /= total;
  }
}

attention_detail::AttentionItemsFn items_for(CpuLevel level) {
  switch (level) {
    case CpuLevel::Avx512:
    case CpuLevel::Amx: return attention_detail::attention_items_avx512;
    case CpuLevel::Avx2: return attention_detail::attention_items_avx2;
    case CpuLevel::Scalar: break;
  }
  return attention_detail::attention_items_impl<OpsScalar>;
}

}  // namespace

void attention(const float* q, const float* k_cache, const float* v_cache, float* out, const AttentionParams& p,
               ThreadPool& pool, CpuLevel level) {
  check_params(q, k_cache, v_cache, out, p);
  KILN_CHECK(level <= cpu_level_supported(), "attention: CPU level {} asked for, but this CPU runs at most {}",
             cpu_level_name(level), cpu_level_name(cpu_level_supported()));
  if (p.n_tokens == 0) return;
  AttentionJob job;
  job.q = q;
  job.k_cache = k_cache;
  job.v_cache = v_cache;
  job.out = out;
  job.p = p;
  job.n_rep = p.n_heads / p.n_kv_heads;

  // Few (token, kv head) pairs, as in decode, would leave threads idle: split their keys too.
  const int64_t n_keys = p.first_position + p.n_tokens;
  const int64_t pairs = p.n_tokens * p.n_kv_heads;
  const int64_t want = kItemsPerThread * pool.size();
  if (pool.size() > 1 && pairs < want)
    job.n_splits = std::max<int64_t>(1, std::min((want + pairs - 1) / pairs, n_keys / kMinKeysPerSplit));
  if (job.n_splits > 1)
    job.partial = static_cast<float*>(
        pool.shared_scratch(size_t(p.n_tokens * p.n_heads * job.n_splits * (2 + p.head_dim)) * sizeof(float)));

  const int64_t max_keys = (n_keys + job.n_splits - 1) / job.n_splits + 1;
  const size_t scratch_bytes = size_t(attention_detail::scratch_floats(job, max_keys)) * sizeof(float);
  const attention_detail::AttentionItemsFn run = items_for(level);
  pool.parallel_for_thread(pairs * job.n_splits, [&](int64_t begin, int64_t end, int thread) {
    run(job, begin, end, static_cast<float*>(pool.scratch(thread, scratch_bytes)));
  });
  if (job.n_splits > 1) merge_splits(job);
}

void attention_reference(const float* q, const float* k_cache, const float* v_cache, float* out,
                         const AttentionParams& p) {
  check_params(q, k_cache, v_cache, out, p);
  const int hd = p.head_dim;
  const int64_t n_keys = p.first_position + p.n_tokens;
  std::vector<double> scores(static_cast<size_t>(n_keys));
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    const int64_t position = p.first_position + t;
    for (int h = 0; h < p.n_heads; ++h) {
      const int g = h / (p.n_heads / p.n_kv_heads);
      const float* qh = q + (t * p.n_heads + h) * hd;
      double max_score = -INFINITY;
      for (int64_t j = 0; j < n_keys; ++j) {
        const bool after = p.causal && j > position;
        const bool outside = p.window > 0 && (j <= position - p.window || (!p.causal && j >= position + p.window));
        if (after || outside) {
          scores[size_t(j)] = -INFINITY;
          continue;
        }
        double s = 0;
        for (int i = 0; i < hd; ++i) s += double(qh[i]) * double(k_cache[(g * p.kv_stride + j) * hd + i]);
        s *= p.scale;
        if (p.alibi_slopes != nullptr) s += double(p.alibi_slopes[h]) * double(j - position);
        scores[size_t(j)] = s;
        max_score = std::max(max_score, s);
      }
      double total = 0;
      for (int64_t j = 0; j < n_keys; ++j) {
        scores[size_t(j)] = std::exp(scores[size_t(j)] - max_score);  // exp(-inf) = 0 for masked keys
        total += scores[size_t(j)];
      }
      for (int i = 0; i < hd; ++i) {
        double o = 0;
        for (int64_t j = 0; j < n_keys; ++j) o += scores[size_t(j)] * double(v_cache[(g * p.kv_stride + j) * hd + i]);
        out[(t * p.n_heads + h) * hd + i] = float(o / total);
      }
    }
  }
}

}  // namespace kiln
