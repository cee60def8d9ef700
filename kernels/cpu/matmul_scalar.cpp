// The portable matmul level: plain C++ the compiler may vectorize for the baseline ISA. The only level
// on non-x86 hosts, and the fallback for int8 group sizes the SIMD levels do not handle.
#include <cstring>

#include "engine/half.h"
#include "kernels/cpu/matmul_kernels.h"

namespace kiln::matmul_detail {
namespace {

// row: [n_in] f32 copy of weight row `r` (f16 and bf16 widened).
void widen_row(const MatmulJob& job, int64_t r, float* row) {
  const int64_t n = job.n_in;
  if (job.dtype == DType::F32) {
    std::memcpy(row, static_cast<const float*>(job.w) + r * n, size_t(n) * sizeof(float));
    return;
  }
  const uint16_t* src = static_cast<const uint16_t*>(job.w) + r * n;
  if (job.dtype == DType::F16) {
    for (int64_t k = 0; k < n; ++k) row[k] = fp16_to_fp32(src[k]);
  } else {
    for (int64_t k = 0; k < n; ++k) row[k] = bf16_to_fp32(src[k]);
  }
}

// Eight partial sums, so the loop has independent chains and vectorizes without reassociation.
float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[k + l] * b[k + l];
  float sum = 0;
  for (; k < n; ++k) sum += a[k] * b[k];
  for (int l = 0; l < 8; ++l) sum += acc[l];
  return sum;
}

void rows_float(const MatmulJob& job, int64_t row_begin, int64_t row_end, void* scratch) {
  float* row = static_cast<float*>(scratch);  // [n_in]
  for (int64_t r = row_begin; r < row_end; ++r) {
    widen_row(job, r, row);
    for (int64_t t = 0; t < job.n_tokens; ++t) job.y[t * job.n_out + r] = dot(row, job.x + t * job.n_in, job.n_in);
  }
}

int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t n) {
  int32_t sum = 0;
  for (int64_t k = 0; k < n; ++k) sum += int32_t(a[k]) * int32_t(b[k]);
  return sum;
}

// Integer dot product per group, scaled by the weight's and the activation's group scales.
void rows_int8(const MatmulJob& job, int64_t row_begin, int64_t row_end, void*) {
  const QuantizedActivations& xq = job.xq;
  const int64_t gs = job.group_size;
  const int64_t n_groups = job.n_in / gs;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int8_t* w = static_cast<const int8_t*>(job.w) + r * job.n_in;
    const uint16_t* w_scales = job.w_scales + r * n_groups;
    for (int64_t t = 0; t < job.n_tokens; ++t) {
      const int8_t* q = xq.q + t * xq.k_pad;
      const float* x_scales = xq.scale + t * n_groups;
      float acc = 0;
      for (int64_t g = 0; g < n_groups; ++g)
        acc += float(dot_i8(w + g * gs, q + g * gs, gs)) * (fp16_to_fp32(w_scales[g]) * x_scales[g]);
      job.y[t * job.n_out + r] = acc;
    }
  }
}

}  // namespace

MatmulPlan plan_scalar(const MatmulJob& job) {
  MatmulPlan plan;
  if (job.dtype == DType::I8) {
    plan.run = rows_int8;
  } else {
    plan.run = rows_float;
    plan.scratch_bytes = size_t(job.n_in) * sizeof(float);
  }
  return plan;
}

}  // namespace kiln::matmul_detail
