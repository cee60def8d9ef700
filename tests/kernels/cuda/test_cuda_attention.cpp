// cuda::attention against attention_reference (double precision, one head at a time) over head_dim
// 16..256, GQA ratios 1, 3, 4 and 8, 1..256 query tokens, caches of up to 33000 keys, causal and
// bidirectional masks, local windows, ALiBi, every way of splitting the keys, f32, f16 and fp8 caches, the
// decode shapes of a 7B (32 heads / 32 kv heads, head_dim 128), an 8B (32 / 8) and SmolLM2 (9 / 3, 64),
// and one captured CUDA graph replayed at many positions.
// Tolerance (the CPU kernels' bound, doubled for exp2f and the split merge): the output is a convex
// combination of value rows and the f32 scores are off by at most (head_dim + 4) u S, S = the largest
// scale * sum |q k| over visible keys, so |out - ref| <= (16 (head_dim + 4) u S + 4e-6) max|v|. An f16 or
// fp8 cache is compared with the reference over the values it holds, so the same bound applies.
// Unused cache positions hold nan: reading one poisons the output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_gemm.h"
#include "kernels/cuda/matmul.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/cuda/kv_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiln {
namespace {

using cuda::KvDType;

struct Case {
  int64_t n_tokens, first_position;
  int n_heads, n_kv_heads, head_dim;
  bool causal = true;
  int64_t window = 0;
  bool alibi = false;
  int n_splits = 0;  // 0: attention_splits for a cache of max_keys
  KvDType dtype = KvDType::F32;
  int64_t max_keys = 0;  // 0: the keys filled; else the cache size the splits are made for (as the engine does)
};

// A case's host inputs (the cache already rounded to its dtype) and their device copies.
struct Problem {
  Case c;
  AttentionParams p;
  std::vector<float> q, k, v, slopes;
  cuda::DeviceBuffer d_q, d_k, d_v, d_slopes, d_out, d_first, d_partial;
  cuda::AttentionArgs args;

  // Positions [0, n_filled) of the cache hold random keys and values, the rest nan.
  Problem(const Case& cs, int64_t kv_stride, int64_t n_filled, uint32_t seed) : c(cs) {
    p.n_tokens = c.n_tokens;
    p.first_position = c.first_position;
    p.n_heads = c.n_heads;
    p.n_kv_heads = c.n_kv_heads;
    p.head_dim = c.head_dim;
    p.kv_stride = kv_stride;
    p.scale = 1.0f / std::sqrt(float(c.head_dim));
    p.causal = c.causal;
    p.window = c.window;
    const int64_t hd = c.head_dim;
    q = test::random_floats(size_t(c.n_tokens * c.n_heads * hd), seed, -1.5f, 1.5f);
    k = test::random_floats(size_t(c.n_kv_heads * kv_stride * hd), seed + 1, -1.5f, 1.5f);
    v = test::random_floats(k.size(), seed + 2, -2.0f, 2.0f);
    for (int g = 0; g < c.n_kv_heads; ++g)
      for (int64_t j = n_filled; j < kv_stride; ++j)
        for (int64_t i = 0; i < hd; ++i) k[size_t((g * kv_stride + j) * hd + i)] = v[size_t((g * kv_stride + j) * hd + i)] = NAN;
    test::round_to_kv(k, c.dtype);
    test::round_to_kv(v, c.dtype);
    if (c.alibi) {
      for (int h = 0; h < c.n_heads; ++h) slopes.push_back(std::pow(2.0f, -8.0f * float(h + 1) / float(c.n_heads)));
      p.alibi_slopes = slopes.data();
    }
    d_q = test::to_device(q);
    d_k = test::kv_to_device(k, c.dtype);
    d_v = test::kv_to_device(v, c.dtype);
    d_slopes = test::to_device(slopes);
    d_out = test::to_device(std::vector<float>(q.size(), NAN));
    d_first = test::device_scalar(int32_t(c.first_position));
    cuda::AttentionArgs& a = args;
    a.q = d_q.as<float>();
    a.k_cache = d_k.data();
    a.v_cache = d_v.data();
    a.kv_dtype = c.dtype;
    a.out = d_out.as<float>();
    a.first_position = d_first.as<int32_t>();
    a.n_tokens = c.n_tokens;
    a.n_heads = c.n_heads;
    a.n_kv_heads = c.n_kv_heads;
    a.head_dim = c.head_dim;
    a.kv_stride = kv_stride;
    a.scale = p.scale;
    a.causal = c.causal;
    a.window = c.window;
    a.alibi_slopes = c.alibi ? d_slopes.as<float>() : nullptr;
    const int64_t max_keys = c.max_keys > 0 ? c.max_keys : c.first_position + c.n_tokens;
    a.n_splits = c.n_splits > 0 ? c.n_splits
                                : cuda::attention_splits(c.n_tokens, c.n_heads, c.n_kv_heads, c.head_dim, max_keys,
                                                         cuda::multiprocessor_count());
    d_partial = test::to_device(
        std::vector<float>(cuda::attention_partial_floats(a.n_splits, c.n_tokens, c.n_heads, c.head_dim), NAN));
    a.partial = d_partial.as<float>();
  }

  // Compares the device output with the reference for queries at `first_position`. rounding: a relative
  // rounding of the queries' and the probabilities' (2^-11 each for f16), which moves an output by at most
  // rounding * (S + 1) * max|v|.
  void expect_matches(int64_t first_position, double rounding = 0) {
    SCOPED_TRACE(testing::Message() << c.n_tokens << " tokens at " << first_position << ", heads " << c.n_heads << "/"
                                    << c.n_kv_heads << ", head_dim " << c.head_dim << (c.causal ? " causal" : " bidir")
                                    << " window " << c.window << (c.alibi ? " alibi" : "") << " splits "
                                    << args.n_splits << " " << test::kv_name(c.dtype));
    p.first_position = first_position;
    std::vector<float> ref(q.size());
    attention_reference(q.data(), k.data(), v.data(), ref.data(), p);
    const int64_t hd = c.head_dim, n_keys = first_position + c.n_tokens;
    double s_max = 0;  // S over the visible keys of every (token, head)
    for (int64_t t = 0; t < c.n_tokens; ++t)
      for (int h = 0; h < c.n_heads; ++h) {
        const int g = h / (c.n_heads / c.n_kv_heads);
        const int64_t pos = first_position + t;
        for (int64_t j = 0; j < n_keys; ++j) {
          if ((c.causal && j > pos) || (c.window > 0 && (j <= pos - c.window || (!c.causal && j >= pos + c.window))))
            continue;
          double s = 0;
          for (int64_t i = 0; i < hd; ++i)
            s += std::fabs(double(q[size_t((t * c.n_heads + h) * hd + i)]) * k[size_t((g * p.kv_stride + j) * hd + i)]);
          s_max = std::max(s_max, s * p.scale);
        }
      }
    const auto out = test::to_host<float>(d_out, q.size());
    double v_max = 0;
    for (float x : v)
      if (std::isfinite(x)) v_max = std::max(v_max, double(std::fabs(x)));
    const double tol = (16.0 * double(hd + 4) * test::kU * s_max + 4e-6) * 2.0 + rounding * (s_max + 1) * v_max +
                       test::kv_arithmetic_bound(c.dtype, s_max, v_max);
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], tol) << "at " << i;
  }
};

// With split counters the decode kernel uses only the splits the keys fill and merges them itself: the
// same results, call after call (the counters are left zero). Calls the tiled kernel takes ignore them.
void expect_fused_merge_matches(Problem& pr, int64_t first_position) {
  const size_t n_counters = cuda::attention_counter_ints(pr.args.n_kv_heads);
  const auto counters = test::to_device(std::vector<int32_t>(n_counters, 0));
  pr.args.split_counters = counters.as<int>();
  for (int call = 0; call < 2; ++call) {
    SCOPED_TRACE(testing::Message() << "fused merge, call " << call);
    pr.d_out = test::to_device(std::vector<float>(pr.q.size(), NAN));
    pr.args.out = pr.d_out.as<float>();
    cuda::attention(pr.args);
    pr.expect_matches(first_position);
    for (int32_t count : test::to_host<int32_t>(counters, n_counters)) ASSERT_EQ(count, 0);
  }
  pr.args.split_counters = nullptr;
}

void check(const Case& c, uint32_t seed) {
  const int64_t n_keys = c.first_position + c.n_tokens;
  Problem pr(c, n_keys + 5, n_keys, seed);
  cuda::attention(pr.args);
  pr.expect_matches(c.first_position);
  if (pr.args.n_splits > 1) expect_fused_merge_matches(pr, c.first_position);
}

struct Gqa {
  int n_heads, n_kv_heads;
};
constexpr Gqa kGqa[] = {{4, 4}, {6, 2}, {16, 2}};
constexpr KvDType kDTypes[] = {KvDType::F32, KvDType::F16, KvDType::F8};

TEST(CudaAttention, DecodeAndShortPrefillEveryHeadDimAndGqa) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 1;
  for (KvDType dtype : kDTypes)
    for (int hd : {16, 64, 80, 96, 128, 256})
      for (const Gqa& g : kGqa)
        for (auto [n, first] : {std::pair<int64_t, int64_t>{1, 0}, {1, 37}, {3, 100}, {16, 0}, {7, 9}, {16, 1000}}) {
          Case c{n, first, g.n_heads, g.n_kv_heads, hd};
          c.dtype = dtype;
          check(c, seed++);
        }
}

TEST(CudaAttention, MasksWindowsAndAlibi) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 1000;
  for (KvDType dtype : kDTypes)
    for (int hd : {64, 96, 256})
      for (bool causal : {true, false})
        for (int64_t window : {0, 1, 5, 100})
          for (bool alibi : {false, true})
            for (auto [n, first] : {std::pair<int64_t, int64_t>{1, 300}, {2, 300}, {13, 0}, {9, 50}}) {
              if (!causal && first > 0 && n == 1) continue;  // covered by the prefill rows
              check({n, first, 6, 2, hd, causal, window, alibi, 0, dtype}, seed++);
            }
}

TEST(CudaAttention, EverySplitCountGivesTheSameResult) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 2000;
  for (KvDType dtype : kDTypes)
    for (int splits : {1, 2, 5, 32, 256})
      for (auto [n, first] : {std::pair<int64_t, int64_t>{1, 999}, {4, 100}, {16, 10}, {40, 300}}) {
        check({n, first, 8, 1, 128, true, 0, false, splits, dtype}, seed++);
        check({n, first, 6, 2, 64, true, 37, true, splits, dtype}, seed++);
      }
}

// Decode steps of three model shapes at short and long depths, the splits made for a 32K cache (most of
// them empty at a short depth).
TEST(CudaAttention, ModelDecodeShapes) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 2500;
  const Case shapes[] = {{1, 0, 32, 32, 128}, {1, 0, 32, 8, 128}, {1, 0, 9, 3, 64}};
  for (KvDType dtype : kDTypes)
    for (Case c : shapes)
      for (int64_t first : {0, 1, 200, 4095, 8191}) {
        c.first_position = first;
        c.dtype = dtype;
        c.max_keys = 32768;
        check(c, seed++);
        c.max_keys = 0;
        check(c, seed++);
      }
}

TEST(CudaAttention, LongCachesAndPrefill) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 3000;
  for (KvDType dtype : kDTypes) {
    check({1, 4095, 9, 3, 64, true, 0, false, 0, dtype}, seed++);
    check({16, 4080, 8, 1, 128, true, 0, false, 0, dtype}, seed++);
    check({256, 0, 6, 2, 64, true, 0, false, 0, dtype}, seed++);
    check({200, 3896, 4, 4, 80, true, 0, true, 0, dtype}, seed++);
    check({64, 0, 4, 4, 256, false, 0, false, 0, dtype}, seed++);
  }
}

// One decode query over more than 32K keys: split-K on a long cache, with and without window and ALiBi.
TEST(CudaAttention, MoreThanThirtyTwoThousandKeys) {
  KILN_REQUIRE_GPU();
  check({1, 32767, 8, 1, 128}, 4000);
  check({1, 32767, 8, 1, 128, true, 4096, true}, 4001);
  check({4, 32764, 6, 2, 96}, 4002);
  check({1, 33000, 32, 8, 128, true, 0, false, 0, KvDType::F16}, 4003);
  check({1, 33000, 9, 3, 64, true, 0, true, 0, KvDType::F16}, 4004);
  check({1, 33000, 32, 8, 128, true, 0, false, 0, KvDType::F8}, 4005);
}

// A graph captured once, with the splits of the whole cache, replays right at every position (the
// position is read from device memory), with the merge kernel or the fused merge (which uses as many
// splits as each position's keys fill).
TEST(CudaAttention, CapturedGraphReplaysAtEveryPosition) {
  KILN_REQUIRE_GPU();
  for (KvDType dtype : kDTypes)
    for (bool fused : {false, true}) {
      SCOPED_TRACE(fused ? "fused merge" : "merge kernel");
      const int64_t max_keys = 3000, last = 2999;
      Problem pr({1, 0, 32, 8, 128, true, 0, false, 0, dtype, max_keys}, max_keys, last + 1, 5000);
      const auto counters = test::to_device(std::vector<int32_t>(cuda::attention_counter_ints(8), 0));
      if (fused) pr.args.split_counters = counters.as<int>();
      cuda::CudaStream stream;
      pr.args.stream = stream.get();
      cuda::CudaGraph graph;
      graph.capture(stream.get(), [&] { cuda::attention(pr.args); });
      for (int64_t first : {int64_t(0), int64_t(1), int64_t(63), int64_t(64), int64_t(700), last}) {
        const auto position = int32_t(first);
        KILN_CUDA_CHECK(
            cudaMemcpyAsync(pr.d_first.data(), &position, sizeof position, cudaMemcpyHostToDevice, stream.get()));
        graph.launch(stream.get());
        stream.synchronize();
        pr.expect_matches(first);
      }
    }
}

// Prompts on the tensor cores (attention_gemm.h): GQA and MHA, a later chunk of a prompt, a local window
// with ALiBi, both ways, head_dim 80, and rows in several passes; within the f16 rounding of the queries
// and the probabilities of the reference.
TEST(CudaAttention, PromptOnTensorCoresMatchesReference) {
  KILN_REQUIRE_GPU();
  cuda::DeviceBuffer workspace(cuda::gemm_workspace_bytes(16, 64, 0));
  cuda::GemmContext gemm(workspace.data(), workspace.bytes(), 16, 64, 0);
  uint32_t seed = 7000;
  for (const Case& c : {Case{64, 0, 32, 8, 128}, Case{40, 100, 6, 2, 64, true, 37, true},
                        Case{48, 0, 4, 4, 80, false}, Case{200, 56, 9, 3, 64}, Case{17, 0, 8, 1, 128, false, 5, true}})
    for (int64_t rows_per_pass : {int64_t(512), int64_t(16)}) {
      Case f16 = c;
      f16.dtype = KvDType::F16;
      const int64_t n_keys = c.first_position + c.n_tokens;
      Problem pr(f16, n_keys + 5, n_keys, seed++);
      const size_t bytes = cuda::attention_gemm_bytes(c.n_tokens, c.n_heads, c.head_dim, n_keys, rows_per_pass);
      cuda::DeviceBuffer scratch(bytes);
      cuda::AttentionGemmSpace space;
      space.handle = gemm.handle();
      space.cublas_workspace = gemm.cublas_workspace();
      space.cublas_workspace_bytes = gemm.cublas_workspace_bytes();
      space.scratch = scratch.data();
      space.max_tokens = c.n_tokens;
      space.max_keys = n_keys;
      space.rows_per_pass = rows_per_pass;
      SCOPED_TRACE(testing::Message() << rows_per_pass << " rows a pass");
      cuda::attention_gemm(pr.args, c.first_position, space);
      pr.expect_matches(c.first_position, 2 * std::ldexp(1.0, -11));
    }
}

TEST(CudaAttention, SplitsDependOnTheCacheSizeOnly) {
  KILN_REQUIRE_GPU();
  const int sms = cuda::multiprocessor_count();
  // A decode step of a 7B shape fills the GPU with splits for a long cache, fewer for a short one.
  EXPECT_GT(cuda::attention_splits(1, 32, 32, 128, 32768, sms), 1);
  EXPECT_LE(cuda::attention_splits(1, 32, 32, 128, 128, sms), 2);
  EXPECT_LE(cuda::attention_splits(1, 9, 3, 64, 1 << 20, sms), cuda::kAttentionMaxSplits);
  EXPECT_EQ(cuda::attention_splits(1, 9, 3, 64, 1, sms), 1);
}

TEST(CudaAttention, RejectsBadArguments) {
  KILN_REQUIRE_GPU();
  cuda::AttentionArgs a;
  a.n_heads = 6;
  a.n_kv_heads = 4;  // does not divide
  EXPECT_THROW(cuda::attention(a), Error);
  a.n_kv_heads = 2;
  a.head_dim = 512;
  EXPECT_THROW(cuda::attention(a), Error);
  a.head_dim = 64;
  a.n_splits = cuda::kAttentionMaxSplits + 1;
  EXPECT_THROW(cuda::attention(a), Error);
}

}  // namespace
}  // namespace kiln
