// The paged attention kernel compiled for AVX512 (template in paged_attention_impl.h).
#include <cmath>
#include <cstdint>

#include "engine/kiln_format.h"
#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/paged_attention_kernels.h"
#include "kernels/cpu/simd_config.h"
#include "kernels/cpu/simd_ops.h"

#if KILN_X86_SIMD
#include "kernels/cpu/x86_intrinsics.h"

#include "kernels/cpu/target_avx512_begin.h"
#include "kernels/cpu/simd_avx512.h"
#include "kernels/cpu/simd_ops_avx512.h"
#include "kernels/cpu/simd_math.h"
#include "kernels/cpu/paged_attention_impl.h"

namespace kiln::paged_attention_detail {

void paged_items_avx512(const PagedAttentionJob& job, int64_t begin, int64_t end, float* scratch) {
  paged_items_impl<OpsAvx512>(job, begin, end, scratch);
}

}  // namespace kiln::paged_attention_detail

#include "kernels/cpu/target_end.h"

#else  // no x86 SIMD: cpu_level_supported() never offers this level

#include "kernels/cpu/simd_math.h"
#include "kernels/cpu/paged_attention_impl.h"

namespace kiln::paged_attention_detail {

void paged_items_avx512(const PagedAttentionJob& job, int64_t begin, int64_t end, float* scratch) {
  paged_items_impl<OpsScalar>(job, begin, end, scratch);
}

}  // namespace kiln::paged_attention_detail

#endif
