// cuda::paged_attention against paged_attention_reference (double precision) over the CPU test's cases
// (tests/kernels/test_paged_attention_cases.h: GQA 1/3/8, head_dim 7..128, block sizes 1..32, windows,
// ALiBi, prompt chunks beside decode rows, sequences of 1500 keys) and decode batches of a 7B, an 8B and
// SmolLM2 shape plus GQA groups past 8 heads; f32, f16 and fp8 pools (the reference reads the values they
// hold), one block a row or the keys split in chunks (of 256 keys, and of 48 and 1,024); each row bit for
// bit the same alone. Tolerance: the CPU kernels' bound, doubled for exp2f and the merge.
// The prompt tiles of paged_prompt_attention beside the one-row kernel: against the reference within the
// bound of their f16 queries and probabilities, every untiled row as the one-row kernel alone gives it,
// and every tiled row the same bits whatever tile it falls in.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/half.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cuda/paged_attention.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/cuda/kv_test_util.h"
#include "tests/kernels/test_paged_attention_cases.h"

namespace kiln {
namespace {

using cuda::KvDType;

struct DeviceCase {
  cuda::DeviceBuffer q, k_pool, v_pool, table, row_seq, row_position, slopes, out, partial;
  cuda::PagedAttentionArgs args;
};

// d's pools are rounded to dtype first (the reference then reads what the device holds).
DeviceCase upload(test::PagedData& d, KvDType dtype, bool split, int64_t chunk = cuda::kPagedAttentionChunkKeys) {
  test::round_to_kv(d.k_pool, dtype);
  test::round_to_kv(d.v_pool, dtype);
  DeviceCase c;
  c.q = test::to_device(d.q);
  c.k_pool = test::kv_to_device(d.k_pool, dtype);
  c.v_pool = test::kv_to_device(d.v_pool, dtype);
  c.table = test::to_device(d.table);
  c.row_seq = test::to_device(d.row_seq);
  c.row_position = test::to_device(d.row_position);
  c.slopes = test::to_device(d.slopes);
  c.out = cuda::DeviceBuffer(d.q.size() * sizeof(float));
  cuda::PagedAttentionArgs& a = c.args;
  a.kv.k_pool = c.k_pool.data();
  a.kv.v_pool = c.v_pool.data();
  a.kv.block_table = c.table.as<int32_t>();
  a.kv.max_blocks_per_seq = d.p.max_blocks_per_seq;
  a.kv.block_positions = d.p.block_positions;
  a.kv.n_kv_heads = d.p.n_kv_heads;
  a.kv.head_dim = d.p.head_dim;
  a.kv.dtype = dtype;
  a.q = c.q.as<float>();
  a.out = c.out.as<float>();
  a.row_seq = c.row_seq.as<int32_t>();
  a.row_position = c.row_position.as<int32_t>();
  a.n_rows = d.p.n_rows;
  a.n_heads = d.p.n_heads;
  a.scale = d.p.scale;
  a.window = d.p.window;
  a.alibi_slopes = d.slopes.empty() ? nullptr : c.slopes.as<float>();
  a.chunk_keys = chunk;
  if (split) {
    const size_t n = cuda::paged_attention_partial_floats(a.n_rows, a.n_heads, a.kv.head_dim,
                                                          a.kv.max_blocks_per_seq * a.kv.block_positions, chunk);
    c.partial = test::to_device(std::vector<float>(n, NAN));  // a split the merge should skip poisons the output
    a.partial = n > 0 ? c.partial.as<float>() : nullptr;
  }
  return c;
}

// Decode batches of model shapes (one new row a sequence) and GQA groups of more than 8 query heads.
const std::vector<test::PagedCase>& model_cases() {
  static const std::vector<test::PagedCase> all = {
      {32, 32, 128, 16, {1000, 300, 257, 17, 1}, {1, 1, 1, 1, 1}, 0, false},
      {32, 8, 128, 16, {600, 1, 256, 513}, {1, 1, 1, 1}, 0, false},
      {9, 3, 64, 16, {1100, 5, 128, 129, 700, 64, 900, 2}, {1, 1, 1, 1, 1, 1, 1, 1}, 0, false},
      {9, 3, 64, 16, {1100, 520}, {1, 1}, 300, true},
      {16, 1, 64, 16, {300, 40}, {2, 1}, 0, true},
      {24, 2, 96, 8, {260, 9}, {1, 3}, 0, false},
  };
  return all;
}

void check_cases(const std::vector<test::PagedCase>& cases, KvDType dtype, bool split, uint32_t seed,
                 int64_t chunk = cuda::kPagedAttentionChunkKeys) {
  for (const test::PagedCase& c : cases) {
    SCOPED_TRACE(testing::Message() << "heads " << c.n_heads << "/" << c.n_kv_heads << " dim " << c.head_dim
                                    << " block " << c.block_positions << " " << test::kv_name(dtype)
                                    << (split ? " split every " : " one block a row") << (split ? chunk : 0));
    test::PagedData d = test::make_paged(c, seed += 5);
    DeviceCase dev = upload(d, dtype, split, chunk);
    std::vector<float> want(d.q.size());
    paged_attention_reference(d.q.data(), d.k_pool.data(), d.v_pool.data(), want.data(), d.p);
    cuda::paged_attention(dev.args);
    const std::vector<float> got = test::to_host<float>(dev.out, d.q.size());
    // the cases' |q|, |k| <= 1.5 and |v| <= 2 (paged_tolerance's)
    const double s_max = 2.25 * std::sqrt(double(c.head_dim));
    const double tol = 2 * test::paged_tolerance(c.head_dim) + test::kv_arithmetic_bound(dtype, s_max, 2.0);
    for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], tol) << "at " << i;

    // Each row alone gives the same bits.
    const int64_t width = int64_t(c.n_heads) * c.head_dim;
    for (int64_t r = 0; r < d.p.n_rows; ++r) {
      cuda::PagedAttentionArgs one = dev.args;
      one.n_rows = 1;
      one.q += r * width;
      one.row_seq += r;
      one.row_position += r;
      cuda::DeviceBuffer out(size_t(width) * sizeof(float));
      one.out = out.as<float>();
      const int64_t max_keys = one.kv.max_blocks_per_seq * one.kv.block_positions;
      const size_t n_partial = cuda::paged_attention_partial_floats(1, c.n_heads, c.head_dim, max_keys, chunk);
      cuda::DeviceBuffer partial(std::max<size_t>(n_partial, 1) * sizeof(float));
      if (one.partial != nullptr) one.partial = partial.as<float>();
      cuda::paged_attention(one);
      const std::vector<float> alone = test::to_host<float>(out, size_t(width));
      ASSERT_EQ(alone, std::vector<float>(got.begin() + r * width, got.begin() + (r + 1) * width)) << "row " << r;
    }

    // Asked for an f16 copy too (what an f16 GEMM reads next): out keeps its bits, out16 holds them rounded.
    {
      cuda::PagedAttentionArgs both = dev.args;
      cuda::DeviceBuffer out(got.size() * sizeof(float)), out16(got.size() * sizeof(uint16_t));
      both.out = out.as<float>();
      both.out16 = out16.as<__half>();
      cuda::paged_attention(both);
      ASSERT_EQ(test::to_host<float>(out, got.size()), got);
      const std::vector<uint16_t> halves = test::to_host<uint16_t>(out16, got.size());
      for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(halves[i], fp32_to_fp16(got[i])) << "f16 at " << i;
    }

    // A bound on the positions (fewer split blocks) changes no bit.
    if (split) {
      cuda::PagedAttentionArgs bounded = dev.args;
      bounded.max_keys = *std::max_element(d.row_position.begin(), d.row_position.end()) + 1;
      cuda::DeviceBuffer out(got.size() * sizeof(float));
      bounded.out = out.as<float>();
      cuda::paged_attention(bounded);
      ASSERT_EQ(test::to_host<float>(out, got.size()), got) << "with max_keys " << bounded.max_keys;
    }
  }
}

TEST(CudaPagedAttention, MatchesReference) {
  KILN_REQUIRE_GPU();
  for (KvDType dtype : {KvDType::F32, KvDType::F16, KvDType::F8})
    for (bool split : {false, true}) check_cases(test::paged_cases(), dtype, split, 3);
}

TEST(CudaPagedAttention, ModelDecodeBatches) {
  KILN_REQUIRE_GPU();
  for (KvDType dtype : {KvDType::F32, KvDType::F16, KvDType::F8})
    for (bool split : {false, true}) check_cases(model_cases(), dtype, split, 500);
}

// Splits of other sizes: a handful of keys (many splits a row) and 1,024 (most rows in one).
TEST(CudaPagedAttention, OtherSplitSizes) {
  KILN_REQUIRE_GPU();
  for (int64_t chunk : {int64_t(48), int64_t(1024)}) {
    check_cases(test::paged_cases(), KvDType::F16, true, 40, chunk);
    check_cases(model_cases(), KvDType::F16, true, 700, chunk);
  }
}

// Query values far past what f16 holds beside e4m3 keys (4,000 in dimension 0 at head_dim 128: 510 after
// the scale, times keys of 448): the fp8 decode scales such a query chunk down and its score back, so each
// row attends to its own key, +448 in dimension 0 where every other key is -448, and returns that key's
// values as the reference does; unscaled, the f16 sums overflow to inf and the outputs to nan. One query
// head a kv head (a block a row) and four (four rows a block).
TEST(CudaPagedAttention, Fp8DecodeHoldsLargeQueries) {
  KILN_REQUIRE_GPU();
  for (const int n_kv_heads : {32, 8}) {
    SCOPED_TRACE(testing::Message() << "32 query heads, " << n_kv_heads << " kv heads");
    const test::PagedCase c{32, n_kv_heads, 128, 16, {700, 300, 17, 1}, {1, 1, 1, 1}, 0, false};
    test::PagedData d = test::make_paged(c, 77);
    const int64_t max_blocks = d.p.max_blocks_per_seq, bs = c.block_positions;
    for (size_t s = 0; s < c.seq_lengths.size(); ++s) {
      const int64_t len = c.seq_lengths[s];
      for (int g = 0; g < n_kv_heads; ++g)
        for (int64_t j = 0; j < len; ++j) {
          const int64_t block = d.table[size_t(int64_t(s) * max_blocks + j / bs)];
          d.k_pool[size_t(((block * n_kv_heads + g) * bs + j % bs) * c.head_dim)] = j == len - 1 ? 448.0f : -448.0f;
        }
    }
    for (size_t i = 0; i < d.q.size(); i += size_t(c.head_dim)) d.q[i] = 4000.0f;
    DeviceCase dev = upload(d, KvDType::F8, false);
    std::vector<float> want(d.q.size());
    paged_attention_reference(d.q.data(), d.k_pool.data(), d.v_pool.data(), want.data(), d.p);
    cuda::paged_attention(dev.args);
    const std::vector<float> got = test::to_host<float>(dev.out, d.q.size());
    for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 2 * test::paged_tolerance(c.head_dim)) << i;
  }
}

// Prompt tiles (paged_prompt_attention) beside decode rows: the cases with a head_dim of whole 16-byte
// chunks, and long prompts of model shapes, with windows, ALiBi, GQA up to 64 query heads a kv head.
std::vector<test::PagedCase> prompt_cases() {
  std::vector<test::PagedCase> all = {
      {32, 32, 128, 16, {700, 90, 1}, {300, 90, 1}, 0, false},
      {32, 8, 128, 16, {200, 5}, {200, 1}, 0, false},
      {9, 3, 64, 16, {1100, 520}, {130, 1}, 300, true},
      {4, 2, 16, 16, {45, 38}, {45, 30}, 0, false},
      {2, 1, 24, 16, {70}, {70}, 24, false},
      {128, 2, 64, 16, {40, 3}, {40, 1}, 0, true},
  };
  for (const test::PagedCase& c : test::paged_cases())
    if (c.head_dim % 8 == 0) all.push_back(c);
  return all;
}

// The rows of sequences with more than one new row (a prompt chunk) are the tiled ones: 1, else 0.
std::vector<int32_t> prompt_rows(const test::PagedCase& c, const test::PagedData& d) {
  std::vector<int32_t> in_tile;
  for (int32_t s : d.row_seq) in_tile.push_back(c.new_rows[size_t(s)] > 1 ? 1 : 0);
  return in_tile;
}

// Tiles [first row, rows] over the tiled rows: runs of one sequence cut every `most` rows, the first tile
// of each run min(first, most) rows (0: `most`).
std::vector<int32_t> cut_tiles(const test::PagedData& d, const std::vector<int32_t>& in_tile, int most, int first) {
  std::vector<int32_t> tiles;
  bool first_of_run = false;  // the last tile is its run's first
  for (int64_t r = 0; r < d.p.n_rows; ++r) {
    if (in_tile[size_t(r)] == 0) continue;
    const bool run_start = r == 0 || in_tile[size_t(r - 1)] == 0 || d.row_seq[size_t(r - 1)] != d.row_seq[size_t(r)];
    const int cap = first_of_run && first > 0 ? std::min(first, most) : most;
    if (run_start || tiles.back() == cap) {
      tiles.push_back(int32_t(r));
      tiles.push_back(1);
      first_of_run = run_start;
    } else {
      ++tiles.back();
    }
  }
  return tiles;
}

// An f16 pool, and an fp8 one (its tiles widened to f16 in shared memory) where head_dim is whole chunks of
// 16 values.
TEST(CudaPagedAttention, PromptTilesMatchReferenceAndAreAlikeInAnyTile) {
  KILN_REQUIRE_GPU();
  uint32_t seed = 900;
  for (KvDType dtype : {KvDType::F16, KvDType::F8}) {
    for (const test::PagedCase& c : prompt_cases()) {
      if (dtype == KvDType::F8 && c.head_dim % 16 != 0) continue;
      SCOPED_TRACE(testing::Message() << "heads " << c.n_heads << "/" << c.n_kv_heads << " dim " << c.head_dim
                                      << " block " << c.block_positions << " window " << c.window << " "
                                      << test::kv_name(dtype));
      test::PagedData d = test::make_paged(c, seed += 7);
      DeviceCase dev = upload(d, dtype, true);
      ASSERT_TRUE(cuda::paged_prompt_attention_supported(dev.args.kv, c.n_heads));
      const std::vector<int32_t> in_tile = prompt_rows(c, d);
      const cuda::DeviceBuffer skip = test::to_device(in_tile);
      const int most = cuda::paged_prompt_tile_rows(c.n_heads, c.n_kv_heads);
      const size_t width = size_t(c.n_heads) * size_t(c.head_dim);

      // Prompt tiles, then the one-row kernel for the rest; the output starts as nan, so a row nobody
      // writes fails.
      const auto run = [&](const std::vector<int32_t>& tiles) {
        cuda::PagedAttentionArgs a = dev.args;
        cuda::DeviceBuffer out = test::to_device(std::vector<float>(d.q.size(), NAN));
        a.out = out.as<float>();
        const cuda::DeviceBuffer tiles_dev = test::to_device(tiles.empty() ? std::vector<int32_t>{0} : tiles);
        cuda::paged_prompt_attention(a, tiles_dev.as<int32_t>(), int64_t(tiles.size() / 2));
        a.skip_rows = skip.as<int32_t>();
        cuda::paged_attention(a);
        return test::to_host<float>(out, d.q.size());
      };
      const std::vector<float> got = run(cut_tiles(d, in_tile, most, 0));

      std::vector<float> want(d.q.size());
      paged_attention_reference(d.q.data(), d.k_pool.data(), d.v_pool.data(), want.data(), d.p);
      cuda::paged_attention(dev.args);  // every row through the one-row kernel
      const std::vector<float> one_row = test::to_host<float>(dev.out, d.q.size());
      // The queries and probabilities in f16: a score is off by up to 2^-11 of sum |q_i k_i| (2.25 head_dim
      // at most, times the scale), a probability by 2^-11 more; each moves the output by its share of |v| <= 2.
      const double scores = 2.25 * std::sqrt(double(c.head_dim));
      const double prompt_tol = 2.0 * std::ldexp(1.0, -11) * (2.0 * scores + 2.0);
      double worst = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        const size_t row = i / width;
        if (in_tile[row] != 0) {
          worst = std::max(worst, std::abs(double(got[i]) - want[i]));
          ASSERT_NEAR(got[i], want[i], prompt_tol) << "tiled row " << row;
        } else {
          ASSERT_EQ(got[i], one_row[i]) << "untiled row " << row << " differs from the one-row kernel alone";
        }
      }
      std::printf("%s heads %d/%d dim %d: tiled rows within %.2e of the reference (bound %.2e)\n",
                  test::kv_name(dtype), c.n_heads, c.n_kv_heads, c.head_dim, worst, prompt_tol);

      // Every row the same bits whatever its tile: one row a tile, and runs cut at another row.
      for (const auto& [tile_most, first] :
           {std::pair{1, 0}, std::pair{most, std::max(1, most / 3)}, std::pair{3, 2}}) {
        const std::vector<float> again = run(cut_tiles(d, in_tile, std::min(tile_most, most), first));
        ASSERT_EQ(again, got) << "tiles of " << tile_most << ", the first of " << first;
      }
    }
  }
}

// The tests' e4m3 codec (kv_test_util.h) on what the format defines: every code decodes and encodes back,
// halfway values take the even code, and large ones saturate at 448 (no GPU needed).
TEST(CudaPagedAttention, TestsE4m3CodecFollowsTheFormat) {
  for (int c = 0; c < 256; ++c) {
    const float v = test::e4m3_to_fp32(uint8_t(c));
    if ((c & 0x7F) == 0x7F) EXPECT_TRUE(std::isnan(v)) << c;
    else EXPECT_EQ(test::fp32_to_e4m3(v), uint8_t(c)) << c;
  }
  EXPECT_EQ(test::e4m3_to_fp32(0x38), 1.0f);
  EXPECT_EQ(test::e4m3_to_fp32(0x7E), 448.0f);
  EXPECT_EQ(test::e4m3_to_fp32(0x08), std::ldexp(1.0f, -6));  // the smallest normal
  EXPECT_EQ(test::e4m3_to_fp32(0x01), std::ldexp(1.0f, -9));  // the smallest subnormal
  EXPECT_EQ(test::fp32_to_e4m3(1.0625f), 0x38);  // halfway between 1 (even) and 1.125
  EXPECT_EQ(test::fp32_to_e4m3(1.1875f), 0x3A);  // halfway between 1.125 and 1.25 (even)
  EXPECT_EQ(test::fp32_to_e4m3(std::ldexp(1.0f, -10)), 0x00);  // halfway between 0 (even) and 2^-9
  EXPECT_EQ(test::fp32_to_e4m3(1000.0f), 0x7E);
  EXPECT_EQ(test::fp32_to_e4m3(-INFINITY), 0xFE);
}

TEST(CudaPagedAttention, PromptTilesRejectF32PoolsAndUnfitHeads) {
  cuda::PagedKvLayout kv;
  kv.n_kv_heads = 2;
  kv.head_dim = 128;
  kv.dtype = KvDType::F32;
  EXPECT_FALSE(cuda::paged_prompt_attention_supported(kv, 8));
  kv.dtype = KvDType::F16;
  EXPECT_TRUE(cuda::paged_prompt_attention_supported(kv, 8));
  kv.head_dim = 256;
  EXPECT_FALSE(cuda::paged_prompt_attention_supported(kv, 8));
  kv.head_dim = 36;
  EXPECT_FALSE(cuda::paged_prompt_attention_supported(kv, 8));
  kv.head_dim = 64;
  EXPECT_FALSE(cuda::paged_prompt_attention_supported(kv, 2 * 65));  // 65 query heads a kv head
  kv.dtype = KvDType::F8;
  EXPECT_TRUE(cuda::paged_prompt_attention_supported(kv, 8));
  kv.head_dim = 24;  // whole 16-byte chunks of f16, not of fp8
  EXPECT_FALSE(cuda::paged_prompt_attention_supported(kv, 8));
  cuda::PagedAttentionArgs a;
  a.kv = kv;
  a.kv.dtype = KvDType::F32;
  const int32_t tiles[2] = {0, 1};
  EXPECT_THROW(cuda::paged_prompt_attention(a, tiles, 1), Error);  // null pool, and f32
  EXPECT_THROW(cuda::paged_prompt_attention(a, tiles, -1), Error);
}

TEST(CudaPagedAttention, RejectsBadArgs) {
  cuda::PagedAttentionArgs a;
  a.n_rows = 1;
  EXPECT_THROW(cuda::paged_attention(a), Error);  // null pool and table
  a.n_rows = -1;
  EXPECT_THROW(cuda::paged_attention(a), Error);
  EXPECT_THROW((void)cuda::paged_attention_partial_floats(4, 8, 64, 1024, 0), Error);  // splits of no key
}

// A call whose every other argument passes is refused for splits of no key, naming them; the checks run on
// the host before any launch (the pointers here are never read).
TEST(CudaPagedAttention, RejectsSplitsOfNoKey) {
  float dummy[4] = {};
  int32_t ints[4] = {};
  cuda::PagedAttentionArgs a;
  a.kv.k_pool = a.kv.v_pool = dummy;
  a.kv.block_table = ints;
  a.kv.max_blocks_per_seq = 4;
  a.q = a.out = dummy;
  a.row_seq = a.row_position = ints;
  a.n_rows = 1;
  a.partial = dummy;
  a.chunk_keys = 0;
  try {
    cuda::paged_attention(a);
    FAIL() << "splits of no key were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("splits of 0 keys"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln
