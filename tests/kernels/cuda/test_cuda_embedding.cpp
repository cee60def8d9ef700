// cuda::embedding against dequantize_row (the CPU's exact dequantization): token rows of every weight
// dtype, times the embedding scale, plus learned position rows at first_position + offset. Each output
// is at most two f32 roundings from the double-precision sum.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/embedding.h"
#include "tests/kernels/cuda/weight_fixture.h"

namespace kiln {
namespace {

TEST(CudaEmbedding, MatchesDequantizedRows) {
  KILN_REQUIRE_GPU();
  const int64_t vocab = 50, dim = 96, n_positions = 40;
  uint32_t seed = 1;
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::I8})
    for (bool learned : {false, true})
      for (float scale : {1.0f, 2.5f}) {
        SCOPED_TRACE(testing::Message() << dtype_name(dtype) << " learned " << learned << " scale " << scale);
        const auto tok = test::make_weight(dtype, vocab, dim, 32, seed++);
        const auto pos = test::make_weight(dtype, n_positions, dim, 32, seed++);
        const std::vector<int32_t> tokens = {0, 49, 7, 7, 23};
        const int32_t first = 11, offset = 2;
        const auto d_tokens = test::to_device(tokens);
        const auto d_first = test::device_scalar(first);
        const auto d_x = test::to_device(std::vector<float>(tokens.size() * dim, NAN));
        cuda::EmbeddingArgs a;
        a.token_embd = tok.device;
        if (learned) a.pos_embd = pos.device;
        a.tokens = d_tokens.as<int32_t>();
        a.first_position = d_first.as<int32_t>();
        a.position_offset = offset;
        a.scale = scale;
        a.x = d_x.as<float>();
        a.n_tokens = int64_t(tokens.size());
        cuda::embedding(a);
        const auto x = test::to_host<float>(d_x, tokens.size() * dim);
        std::vector<float> row(dim), pos_row(dim);
        for (size_t t = 0; t < tokens.size(); ++t) {
          dequantize_row(tok.view, tokens[t], row.data());
          dequantize_row(pos.view, first + int64_t(t) + offset, pos_row.data());
          for (int64_t i = 0; i < dim; ++i) {
            const double ref = double(row[i]) * scale + (learned ? double(pos_row[i]) : 0.0);
            ASSERT_NEAR(x[t * dim + i], ref, 8 * test::kU * (std::fabs(ref) + 4)) << "token " << t << " col " << i;
          }
        }
      }
}

// Projected rows (OPT's narrow embedding after its projection) and token type 0 (BERT), in the CPU's
// order: ((row * scale) + type row) + position row.
TEST(CudaEmbedding, ProjectedRowsTokenTypesAndPositions) {
  KILN_REQUIRE_GPU();
  const int64_t dim = 64, n_tokens = 3;
  const auto narrow = test::make_weight(DType::F16, 20, 16, 16, 1);  // the token table, unused with projected rows
  const auto types = test::make_weight(DType::F16, 2, dim, 32, 2);
  const auto pos = test::make_weight(DType::F16, 10, dim, 32, 3);
  const auto projected = test::random_floats(size_t(n_tokens * dim), 4);
  const std::vector<int32_t> tokens = {3, 4, 5};
  const auto d_projected = test::to_device(projected), d_tokens = test::to_device(tokens);
  const auto d_first = test::device_scalar(2);
  const auto d_x = test::to_device(std::vector<float>(size_t(n_tokens * dim), NAN));
  cuda::EmbeddingArgs a;
  a.token_embd = narrow.device;
  a.type_embd = types.device;
  a.pos_embd = pos.device;
  a.projected = d_projected.as<float>();
  a.tokens = d_tokens.as<int32_t>();
  a.first_position = d_first.as<int32_t>();
  a.scale = 0.5f;
  a.dim = dim;
  a.x = d_x.as<float>();
  a.n_tokens = n_tokens;
  cuda::embedding(a);
  const auto x = test::to_host<float>(d_x, size_t(n_tokens * dim));
  std::vector<float> type0(dim), pos_row(dim);
  dequantize_row(types.view, 0, type0.data());
  for (int64_t t = 0; t < n_tokens; ++t) {
    dequantize_row(pos.view, 2 + t, pos_row.data());
    for (int64_t i = 0; i < dim; ++i) {
      const float want = ((projected[size_t(t * dim + i)] * 0.5f) + type0[size_t(i)]) + pos_row[size_t(i)];
      ASSERT_EQ(x[size_t(t * dim + i)], want) << "token " << t << " col " << i;
    }
  }
  a.dim = 32;  // the tables are 64 wide
  EXPECT_THROW(cuda::embedding(a), Error);
}

}  // namespace
}  // namespace kiln
