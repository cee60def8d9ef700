// The paged KV store of paged_attention.h: rows rotated at each row's own position, then stored
// (paged_rotary_kv_store, the rotary device code of rotary_kv_append).
#include <algorithm>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/kv_store.cuh"
#include "kernels/cuda/launch_pdl.cuh"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/rotary_device.cuh"

namespace kiln::cuda {
namespace {

constexpr int kRotaryThreads = 128;  // a pair per thread for head_dim up to 256

// Block (row blockIdx.x, slots [blockIdx.y * slots_per_block, + slots_per_block) of its qkv row), as in
// rotary.cu: a dependent launch (launch_pdl.cuh) that computes the angles while the QKV matmul before it
// finishes. They need only the row's position, which the step copies in before its first kernel.
template <RotaryMode kMode>
__global__ void __launch_bounds__(kRotaryThreads)
    paged_rotary_kv_store_kernel(PagedRotaryStoreArgs a, RotaryShape shape, int slots_per_block) {
  extern __shared__ float cs[];
  pdl_launch_dependents();  // the attention may be scheduled: it waits for this kernel to finish
  const int64_t r = blockIdx.x;
  const int64_t position = a.row_position[r];
  rotary_angles<kMode>(position, shape, cs);
  pdl_wait();  // qkv is written, and the pool's blocks are free
  const int32_t* table = a.kv.block_table + int64_t(a.row_seq[r]) * a.kv.max_blocks_per_seq;
  float* row = a.qkv + r * a.qkv_stride;
  const int n_heads = shape.n_heads, head_dim = shape.head_dim;
  // The row's slot of kv head h is at base + h * head_stride: the block found once, not once a value.
  const int64_t base = paged_slot_offset(a.kv, table, position, 0);
  const int64_t head_stride = int64_t(a.kv.block_positions) * head_dim;
  auto store_qk = [&](int slot, int d, float v) {
    if (slot < n_heads) {
      if (a.q_out != nullptr) a.q_out[(r * n_heads + slot) * head_dim + d] = v;
      else row[slot * head_dim + d] = v;
    } else {
      const int h = slot - n_heads;
      kv_store_value(a.kv.k_pool, a.kv.dtype, base + h * head_stride + d, v);
      if (a.k_out != nullptr) a.k_out[(r * shape.n_kv_heads + h) * head_dim + d] = v;
    }
  };
  auto store_v = [&](int h, int d, float v) { kv_store_value(a.kv.v_pool, a.kv.dtype, base + h * head_stride + d, v); };
  const int n_slots = n_heads + 2 * shape.n_kv_heads, first = int(blockIdx.y) * slots_per_block;
  rotary_apply<kMode>(row, shape, a.q_out != nullptr, cs, first, min(first + slots_per_block, n_slots), store_qk,
                      store_v);
}

template <RotaryMode kMode>
void launch_rotary_store(const PagedRotaryStoreArgs& a) {
  const RotaryShape shape{a.n_heads, a.kv.n_kv_heads, a.kv.head_dim, a.rotary_dim, double(a.theta),
                          double(a.position_scale)};
  const size_t shared = sizeof(float) * size_t(rotary_shared_floats(kMode, a.rotary_dim));
  const int n_slots = a.n_heads + 2 * a.kv.n_kv_heads, slots_per_block = rotary_slots_per_block(a.n_rows, n_slots);
  const dim3 grid(unsigned(a.n_rows), unsigned((n_slots + slots_per_block - 1) / slots_per_block));
  launch_pdl(paged_rotary_kv_store_kernel<kMode>, grid, dim3(kRotaryThreads), shared, a.stream, a, shape,
             slots_per_block);
}

}  // namespace

void check_paged_layout(const PagedKvLayout& kv, const char* what) {
  KILN_CHECK(kv.n_kv_heads >= 1 && kv.n_kv_heads <= 65535 && kv.head_dim >= 1 &&
                 kv.head_dim <= kPagedAttentionMaxHeadDim && kv.block_positions >= 1 && kv.max_blocks_per_seq >= 1,
             "cuda {}: bad KV layout: {} kv heads, head_dim {} (at most {}), {} positions a block, {} blocks a "
             "sequence",
             what, kv.n_kv_heads, kv.head_dim, kPagedAttentionMaxHeadDim, kv.block_positions, kv.max_blocks_per_seq);
  KILN_CHECK(kv.k_pool != nullptr && kv.v_pool != nullptr && kv.block_table != nullptr, "cuda {}: null pool or table",
             what);
}

void paged_rotary_kv_store(const PagedRotaryStoreArgs& a) {
  KILN_CHECK(a.n_rows >= 0 && a.n_rows < (int64_t(1) << 31), "cuda paged_rotary_kv_store: {} rows", a.n_rows);
  if (a.n_rows == 0) return;
  check_paged_layout(a.kv, "paged_rotary_kv_store");
  KILN_CHECK(a.n_heads >= 1 && a.n_heads + 2 * a.kv.n_kv_heads <= 65535 &&
                 a.qkv_stride >= int64_t(a.n_heads + 2 * a.kv.n_kv_heads) * a.kv.head_dim,
             "cuda paged_rotary_kv_store: qkv rows of {} values cannot hold {} + 2 x {} heads of {}", a.qkv_stride,
             a.n_heads, a.kv.n_kv_heads, a.kv.head_dim);
  check_rotary(a.mode, a.rotary_dim, a.kv.head_dim, a.theta, a.position_scale);
  KILN_CHECK(a.qkv != nullptr && a.row_seq != nullptr && a.row_position != nullptr,
             "cuda paged_rotary_kv_store: null qkv rows, sequences or positions");
  switch (a.mode) {
    case RotaryMode::None: launch_rotary_store<RotaryMode::None>(a); break;
    case RotaryMode::RotateHalf: launch_rotary_store<RotaryMode::RotateHalf>(a); break;
    case RotaryMode::RotateEveryTwo: launch_rotary_store<RotaryMode::RotateEveryTwo>(a); break;
  }
}

}  // namespace kiln::cuda
