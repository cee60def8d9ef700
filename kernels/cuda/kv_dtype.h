// The element type of a KV cache (contiguous or paged): f32, or f16 for half the memory traffic. The
// kernels that write a cache and those that read it take the same field.
#pragma once

#include <cstddef>

namespace kiln::cuda {

enum class KvDType { F32, F16 };

inline constexpr size_t kv_dtype_bytes(KvDType dtype) { return dtype == KvDType::F16 ? 2 : 4; }

}  // namespace kiln::cuda
