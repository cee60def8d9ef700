// What the paged KV kernels share: the pool address of a position, and the layout check.
#pragma once

#include <cstdint>

#include "kernels/cuda/paged_attention.h"

namespace kiln::cuda {

// Element offset of position j of kv head g of the sequence whose block-table row is `table`.
__device__ __forceinline__ int64_t paged_slot_offset(const PagedKvLayout& kv, const int32_t* table, int64_t j, int g) {
  const int64_t block = table[j / kv.block_positions];
  return ((block * kv.n_kv_heads + g) * kv.block_positions + j % kv.block_positions) * kv.head_dim;
}

// Throws kiln::Error (naming `what`) for a bad layout or a null pool or table.
void check_paged_layout(const PagedKvLayout& kv, const char* what);

}  // namespace kiln::cuda
