#include "kernels/cpu/matmul.h"

#include <algorithm>

#include "engine/error.h"
#include "engine/half.h"
#include "kernels/cpu/matmul_kernels.h"

namespace kiln {
namespace {

using matmul_detail::MatmulJob;
using matmul_detail::MatmulPlan;

// Below this many tokens x is quantized on the calling thread: waking the pool costs more.
constexpr int64_t kParallelQuantizeTokens = 8;

void check_weight(const TensorView& w, const char* what) {
  KILN_CHECK(w.n_dims == 2, "{}: weight '{}' must be 2-D [n_out, n_in], not {}", what, w.name,
             w.shape_string());
  KILN_CHECK(w.dims[0] > 0 && w.dims[1] > 0, "{}: weight '{}' has an empty shape {}", what, w.name,
             w.shape_string());
  KILN_CHECK(w.dtype == DType::F32 || w.dtype == DType::F16 || w.dtype == DType::BF16 || w.dtype == DType::I8,
             "{}: weight '{}' has dtype {}; matmul takes f32, f16, bf16 or int8", what, w.name,
             dtype_name(w.dtype));
  KILN_CHECK(w.data != nullptr, "{}: weight '{}' has no data", what, w.name);
  const uint64_t need = uint64_t(w.numel()) * dtype_bytes(w.dtype);
  KILN_CHECK(w.bytes >= need, "{}: weight '{}' {} {} needs {} bytes but the view holds {}", what, w.name,
             dtype_name(w.dtype), w.shape_string(), need, w.bytes);
  if (w.dtype == DType::I8) {
    KILN_CHECK(w.group_size > 0 && w.cols() % w.group_size == 0,
               "{}: int8 weight '{}' {} has group size {}, which must divide its {} columns", what, w.name,
               w.shape_string(), w.group_size, w.cols());
    KILN_CHECK(w.scales != nullptr, "{}: int8 weight '{}' has no scales", what, w.name);
  }
}

float weight_at(const TensorView& w, int64_t row, int64_t col) {
  const int64_t i = row * w.cols() + col;
  switch (w.dtype) {
    case DType::F32: return static_cast<const float*>(w.data)[i];
    case DType::F16: return fp16_to_fp32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::BF16: return bf16_to_fp32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::I8: {
      const int64_t scale = row * (w.cols() / w.group_size) + col / w.group_size;
      return float(static_cast<const int8_t*>(w.data)[i]) * fp16_to_fp32(w.scales[scale]);
    }
    case DType::U8: break;
  }
  fail("weight '{}' has no f32 value: dtype {}", w.name, dtype_name(w.dtype));
}

MatmulPlan plan_for(CpuLevel level, const MatmulJob& job) {
  switch (level) {
    case CpuLevel::Amx: return matmul_detail::plan_amx(job);
    case CpuLevel::Avx512: return matmul_detail::plan_avx512(job);
    case CpuLevel::Avx2: return matmul_detail::plan_avx2(job);
    case CpuLevel::Scalar: break;
  }
  return matmul_detail::plan_scalar(job);
}

}  // namespace

void matmul(const TensorView& weight, const float* x, float* y, int64_t n_tokens, ThreadPool& pool,
            CpuLevel level) {
  check_weight(weight, "matmul");
  KILN_CHECK(n_tokens >= 0, "matmul: n_tokens is {}", n_tokens);
  KILN_CHECK(level <= cpu_level_supported(), "matmul: CPU level {} asked for, but this CPU runs at most {}",
             cpu_level_name(level), cpu_level_name(cpu_level_supported()));
  if (n_tokens == 0) return;
  KILN_CHECK(x != nullptr && y != nullptr, "matmul: x or y is null");

  MatmulJob job;
  job.dtype = weight.dtype;
  job.w = weight.data;
  job.n_out = weight.rows();
  job.n_in = weight.cols();
  job.n_tokens = n_tokens;
  job.x = x;
  job.y = y;
  if (weight.dtype == DType::I8) {
    job.w_scales = weight.scales;
    job.group_size = weight.group_size;
    // One buffer: x quantized, then for AMX the same values rearranged as tiles.
    const bool amx = level == CpuLevel::Amx && matmul_detail::amx_int8_takes(job);
    const size_t q_bytes = (quantized_activations_bytes(n_tokens, job.n_in, job.group_size) + 63) / 64 * 64;
    auto* buffer = static_cast<char*>(
        pool.shared_scratch(q_bytes + (amx ? matmul_detail::vnni_activations_bytes(n_tokens, job.n_in, job.group_size) : 0)));
    job.xq = quantized_activations_layout(n_tokens, job.n_in, job.group_size, buffer);
    if (n_tokens < kParallelQuantizeTokens) {
      quantize_activation_tokens(x, job.xq, 0, n_tokens, level);
    } else {
      pool.parallel_for(n_tokens,
                        [&](int64_t begin, int64_t end) { quantize_activation_tokens(x, job.xq, begin, end, level); });
    }
    if (amx) {
      auto* xv = reinterpret_cast<int8_t*>(buffer + q_bytes);
      pool.parallel_for((n_tokens + 15) / 16, [&](int64_t begin, int64_t end) {
        matmul_detail::vnni_activation_tiles(job.xq, xv, begin, end);
      });
      job.xv = xv;
    }
  }

  if (level == CpuLevel::Amx && matmul_detail::amx_takes(job)) {
    void* buffer = pool.shared_scratch(matmul_detail::split_activations_bytes(n_tokens, job.n_in));
    job.xs = matmul_detail::split_activations_layout(n_tokens, job.n_in, buffer);
    pool.parallel_for(job.xs.m_pad, [&](int64_t begin, int64_t end) {
      matmul_detail::split_activation_rows(x, n_tokens, job.n_in, job.xs, begin, end);
    });
  }

  const MatmulPlan plan = plan_for(level, job);
  const int64_t n_blocks = (job.n_out + plan.row_block - 1) / plan.row_block;
  pool.parallel_for_thread(n_blocks, [&](int64_t begin, int64_t end, int thread) {
    void* scratch = plan.scratch_bytes > 0 ? pool.scratch(thread, plan.scratch_bytes) : nullptr;
    plan.run(job, begin * plan.row_block, std::min(end * plan.row_block, job.n_out), scratch);
  });
}

void matmul_reference(const TensorView& weight, const float* x, float* y, int64_t n_tokens) {
  check_weight(weight, "matmul_reference");
  const int64_t n_out = weight.rows();
  const int64_t n_in = weight.cols();
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t r = 0; r < n_out; ++r) {
      double sum = 0;
      for (int64_t k = 0; k < n_in; ++k) sum += double(weight_at(weight, r, k)) * double(x[t * n_in + k]);
      y[t * n_out + r] = float(sum);
    }
  }
}

void dequantize_row(const TensorView& weight, int64_t row, float* out) {
  check_weight(weight, "dequantize_row");
  KILN_CHECK(row >= 0 && row < weight.rows(), "dequantize_row: row {} of '{}' {} is out of range", row,
             weight.name, weight.shape_string());
  for (int64_t c = 0; c < weight.cols(); ++c) out[c] = weight_at(weight, row, c);
}

}  // namespace kiln
