#include "kernels/cuda/embedding.h"

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/device_common.cuh"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;

// A table's value as f32; the token types and positions usually share the token embedding's dtype
// (the template's fast path), any other dtype takes the switch.
template <DType kDType>
__device__ __forceinline__ float row_value(const DeviceMatrix& m, int64_t row, int64_t col) {
  if (m.dtype == kDType) return weight_value<kDType>(m.data, m.scales, m.group_size, m.cols, row, col);
  switch (m.dtype) {
    case DType::F16: return weight_value<DType::F16>(m.data, m.scales, m.group_size, m.cols, row, col);
    case DType::BF16: return weight_value<DType::BF16>(m.data, m.scales, m.group_size, m.cols, row, col);
    case DType::I8: return weight_value<DType::I8>(m.data, m.scales, m.group_size, m.cols, row, col);
    default: return weight_value<DType::F32>(m.data, m.scales, m.group_size, m.cols, row, col);
  }
}

// One block per token, in the CPU forward's order: ((row * scale) + type row) + position row.
template <DType kTok>
__global__ void embedding_kernel(DeviceMatrix tok, DeviceMatrix pos, DeviceMatrix type, const float* projected,
                                 const int32_t* __restrict__ tokens, int64_t vocab_begin,
                                 const int32_t* __restrict__ first_position, int64_t position_offset, float scale,
                                 float* __restrict__ x, int64_t dim) {
  const int64_t t = blockIdx.x;
  const int64_t row = tokens[t] - vocab_begin;
  const bool ours = row >= 0 && row < tok.rows;
  const int64_t position = *first_position + t + position_offset;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = projected != nullptr ? projected[t * dim + i] : ours ? row_value<kTok>(tok, row, i) : 0.0f;
    if (scale != 1.0f) v *= scale;
    if (type.data != nullptr) v += row_value<kTok>(type, 0, i);
    if (pos.data != nullptr) v += row_value<kTok>(pos, position, i);
    x[t * dim + i] = v;
  }
}

void embedding_launch(const EmbeddingArgs& a, int64_t dim) {
  const dim3 grid(unsigned(a.n_tokens));
  auto run = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, a.stream>>>(a.token_embd, a.pos_embd, a.type_embd, a.projected, a.tokens,
                                            a.vocab_begin, a.first_position, a.position_offset, a.scale, a.x, dim);
  };
  switch (a.token_embd.dtype) {
    case DType::F16: run(embedding_kernel<DType::F16>); break;
    case DType::BF16: run(embedding_kernel<DType::BF16>); break;
    case DType::I8: run(embedding_kernel<DType::I8>); break;
    default: run(embedding_kernel<DType::F32>); break;
  }
  KILN_CUDA_CHECK_LAUNCH();
}

bool is_weight_dtype(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16 || d == DType::I8; }

}  // namespace

void embedding(const EmbeddingArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.n_tokens < (int64_t(1) << 31), "cuda embedding: {} tokens", a.n_tokens);
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.token_embd.data != nullptr && is_weight_dtype(a.token_embd.dtype) && a.token_embd.cols > 0,
             "cuda embedding: the token embedding is missing or not a weight dtype");
  const int64_t dim = a.dim > 0 ? a.dim : a.token_embd.cols;
  KILN_CHECK(a.projected != nullptr || dim == a.token_embd.cols,
             "cuda embedding: rows of {} values from a token embedding {} wide", dim, a.token_embd.cols);
  for (const DeviceMatrix* m : {&a.token_embd, &a.pos_embd, &a.type_embd}) {
    if (m->data == nullptr) continue;
    KILN_CHECK(is_weight_dtype(m->dtype), "cuda embedding: a table has dtype {}", dtype_name(m->dtype));
    KILN_CHECK(m->dtype != DType::I8 || (m->scales != nullptr && m->group_size > 0 && m->cols % m->group_size == 0),
               "cuda embedding: an int8 table lacks scales or a group size dividing its columns");
    KILN_CHECK(m == &a.token_embd || m->cols == dim, "cuda embedding: a table has {} columns, the rows {}", m->cols,
               dim);
  }
  KILN_CHECK(a.tokens != nullptr && a.first_position != nullptr && a.x != nullptr,
             "cuda embedding: null tokens, position or output");
  embedding_launch(a, dim);
}

}  // namespace kiln::cuda
