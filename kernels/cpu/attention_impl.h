// The attention kernel as a template over an Ops struct (simd_ops.h), instantiated once per level:
// include inside the level's target region, after simd_math.h.
#pragma once

namespace kiln::attention_detail {
namespace {

template <class O>
inline float dot(const float* a, const float* b, int n) {
  constexpr int N = O::kLanes;
  typename O::V acc0 = O::zero(), acc1 = O::zero();
  int i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    acc0 = O::fma(O::load(a + i), O::load(b + i), acc0);
    acc1 = O::fma(O::load(a + i + N), O::load(b + i + N), acc1);
  }
  for (; i + N <= n; i += N) acc0 = O::fma(O::load(a + i), O::load(b + i), acc0);
  if (i < n) acc1 = O::fma(O::load_partial(a + i, n - i), O::load_partial(b + i, n - i), acc1);
  return O::reduce_add(O::add(acc0, acc1));
}

// y += a * x over n floats.
template <class O>
inline void axpy(float* y, float a, const float* x, int n) {
  constexpr int N = O::kLanes;
  const typename O::V av = O::set1(a);
  int i = 0;
  for (; i + N <= n; i += N) O::store(y + i, O::fma(av, O::load(x + i), O::load(y + i)));
  if (i < n) O::store_partial(y + i, O::fma(av, O::load_partial(x + i, n - i), O::load_partial(y + i, n - i)), n - i);
}

template <class O>
inline float row_max(const float* x, int64_t n) {
  constexpr int N = O::kLanes;
  typename O::V m = O::set1(-INFINITY);
  int64_t i = 0;
  for (; i + N <= n; i += N) m = O::max(m, O::load(x + i));
  float result = O::reduce_max(m);
  for (; i < n; ++i) result = x[i] > result ? x[i] : result;
  return result;
}

// x = exp(x - m) in place; returns the sum.
template <class O>
inline float exp_in_place(float* x, int64_t n, float m) {
  constexpr int N = O::kLanes;
  const typename O::V mv = O::set1(m);
  typename O::V sum = O::zero();
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const typename O::V e = exp_approx<O>(O::sub(O::load(x + i), mv));
    O::store(x + i, e);
    sum = O::add(sum, e);
  }
  if (i < n) {
    const int rest = int(n - i);
    // Lanes past the end read 0, and exp(0 - m) must not count: mask them out of the sum with a store
    // and reload.
    const typename O::V e = exp_approx<O>(O::sub(O::load_partial(x + i, rest), mv));
    O::store_partial(x + i, e, rest);
    sum = O::add(sum, O::load_partial(x + i, rest));
  }
  return O::reduce_add(sum);
}

// scores[r][j - j0] = scale * q_r . k_j (+ ALiBi) for the n_rep query heads q_r of one kv head. Keys go
// kLanes at a time: their dot products are reduced together (sum_lanes), and each block of key rows
// stays in L1 across the heads.
template <class O>
void head_scores(const AttentionJob& job, int64_t t, int g, int64_t j0, int64_t j1, float* scores) {
  constexpr int N = O::kLanes;
  const AttentionParams& p = job.p;
  const int hd = p.head_dim;
  const int64_t n = j1 - j0;
  const int64_t position = p.first_position + t;
  const float* k = job.k_cache + int64_t(g) * p.kv_stride * hd;
  int64_t j = j0;
  if constexpr (N > 1) {
    for (; j + N <= j1; j += N) {
      for (int r = 0; r < job.n_rep; ++r) {
        const float* q = job.q + (t * p.n_heads + g * job.n_rep + r) * hd;
        typename O::V acc[N];
        for (int l = 0; l < N; ++l) acc[l] = O::zero();
        int i = 0;
        for (; i + N <= hd; i += N) {
          const typename O::V qv = O::load(q + i);
          for (int l = 0; l < N; ++l) acc[l] = O::fma(qv, O::load(k + (j + l) * hd + i), acc[l]);
        }
        if (i < hd) {
          const typename O::V qv = O::load_partial(q + i, hd - i);
          for (int l = 0; l < N; ++l) acc[l] = O::fma(qv, O::load_partial(k + (j + l) * hd + i, hd - i), acc[l]);
        }
        O::store(scores + r * n + (j - j0), O::mul(O::sum_lanes(acc), O::set1(p.scale)));
      }
    }
  }
  for (; j < j1; ++j)
    for (int r = 0; r < job.n_rep; ++r) {
      const float* q = job.q + (t * p.n_heads + g * job.n_rep + r) * hd;
      scores[r * n + (j - j0)] = dot<O>(q, k + j * hd, hd) * p.scale;
    }
  if (p.alibi_slopes != nullptr)
    for (int r = 0; r < job.n_rep; ++r) {
      const float slope = p.alibi_slopes[g * job.n_rep + r];
      for (int64_t jj = j0; jj < j1; ++jj) scores[r * n + (jj - j0)] += slope * float(jj - position);
    }
}

// acc[0 .. C * kLanes) = sum_j e[j] v[j], the C vectors of the sum held in registers over all keys
// (two sets, so consecutive FMAs are independent).
template <class O, int C>
void weighted_values_fixed(const float* e, const float* v, int64_t n, int hd, float* acc) {
  constexpr int N = O::kLanes;
  typename O::V a[C], b[C];
  for (int c = 0; c < C; ++c) a[c] = b[c] = O::zero();
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const typename O::V e0 = O::set1(e[j]), e1 = O::set1(e[j + 1]);
    for (int c = 0; c < C; ++c) {
      a[c] = O::fma(e0, O::load(v + j * hd + c * N), a[c]);
      b[c] = O::fma(e1, O::load(v + (j + 1) * hd + c * N), b[c]);
    }
  }
  if (j < n) {
    const typename O::V e0 = O::set1(e[j]);
    for (int c = 0; c < C; ++c) a[c] = O::fma(e0, O::load(v + j * hd + c * N), a[c]);
  }
  for (int c = 0; c < C; ++c) O::store(acc + c * N, O::add(a[c], b[c]));
}

// acc: [hd] = sum over the n keys of e[j] * v[j]: v: [n, hd].
template <class O>
void weighted_values(const float* e, const float* v, int64_t n, int hd, float* acc) {
  constexpr int N = O::kLanes;
  if (hd % N == 0) {
    switch (hd / N) {
      case 1: return weighted_values_fixed<O, 1>(e, v, n, hd, acc);
      case 2: return weighted_values_fixed<O, 2>(e, v, n, hd, acc);
      case 4: return weighted_values_fixed<O, 4>(e, v, n, hd, acc);
      case 8: return weighted_values_fixed<O, 8>(e, v, n, hd, acc);
      default: break;
    }
  }
  for (int i = 0; i < hd; ++i) acc[i] = 0.0f;
  for (int64_t j = 0; j < n; ++j) axpy<O>(acc, e[j], v + j * hd, hd);
}

template <class O>
void attention_items_impl(const AttentionJob& job, int64_t begin, int64_t end, float* scratch) {
  const AttentionParams& p = job.p;
  const int hd = p.head_dim;
  const int n_rep = job.n_rep;
  const int64_t n_splits = job.n_splits;
  const int64_t n_keys = p.first_position + p.n_tokens;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t split = item % n_splits;
    const int g = int(item / n_splits % p.n_kv_heads);
    const int64_t t = item / n_splits / p.n_kv_heads;
    int64_t lo, hi;
    visible_keys(p, p.first_position + t, n_keys, lo, hi);
    const int64_t j0 = lo + (hi - lo) * split / n_splits;
    const int64_t j1 = lo + (hi - lo) * (split + 1) / n_splits;
    const int64_t n = j1 - j0;
    float* acc = scratch;                           // [n_rep, hd]
    float* scores = scratch + int64_t(n_rep) * hd;  // [n_rep, n]
    const float* v = job.v_cache + (int64_t(g) * p.kv_stride + j0) * hd;

    head_scores<O>(job, t, g, j0, j1, scores);
    for (int r = 0; r < n_rep; ++r) {
      const int h = g * n_rep + r;
      float* e = scores + r * n;
      const float max_score = n > 0 ? row_max<O>(e, n) : -INFINITY;
      const float sum = n > 0 ? exp_in_place<O>(e, n, max_score) : 0.0f;
      weighted_values<O>(e, v, n, hd, acc + r * hd);
      if (n_splits == 1) {
        float* o = job.out + (t * p.n_heads + h) * hd;
        const float inv = 1.0f / sum;
        for (int i = 0; i < hd; ++i) o[i] = acc[r * hd + i] * inv;
      } else {
        float* part = job.partial + ((t * p.n_heads + h) * n_splits + split) * (2 + hd);
        part[0] = max_score;
        part[1] = sum;
        for (int i = 0; i < hd; ++i) part[2 + i] = acc[r * hd + i];
      }
    }
  }
}

}  // namespace
}  // namespace kiln::attention_detail
