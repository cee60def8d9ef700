#include "kernels/cuda/rotary.h"

#include <cmath>

#include "engine/error.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/kv_store.cuh"
#include "kernels/cuda/launch_pdl.cuh"
#include "kernels/cuda/rotary_device.cuh"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 128;  // a pair per thread for head_dim up to 256

struct Layout {
  const float* qkv;
  int64_t qkv_stride;
  float* q_out;
  float* k_out;
  void* k_cache;
  void* v_cache;
  int64_t kv_stride;
  KvDType kv_dtype;
  RotaryShape shape;
};

// Block (token blockIdx.x, slots [blockIdx.y * slots_per_block, + slots_per_block) of its row). A decode
// step's few tokens take one head a block: the heads in parallel, each thread one pair. A dependent launch
// (launch_pdl.cuh): the angles are computed while the QKV matmul before it finishes. They need only the
// position, which the step copies in before its first kernel, and a kernel launched this way starts only
// once the one before it has started, so that copy is done.
template <RotaryMode kMode>
__global__ void __launch_bounds__(kThreads) rotary_kv_append_kernel(Layout l, const int32_t* __restrict__ first_position,
                                                                    int slots_per_block) {
  extern __shared__ float cs[];
  pdl_launch_dependents();  // the attention may be scheduled: it waits for this kernel to finish
  const int64_t t = blockIdx.x;
  const int64_t position = *first_position + t;
  rotary_angles<kMode>(position, l.shape, cs);
  pdl_wait();  // qkv is written, and the cache rows are free
  const int n_heads = l.shape.n_heads, head_dim = l.shape.head_dim;
  auto cache_at = [&](int h, int d) { return (h * l.kv_stride + position) * head_dim + d; };
  auto store_qk = [&](int slot, int d, float v) {
    if (slot < n_heads) {
      l.q_out[(t * n_heads + slot) * head_dim + d] = v;
    } else {
      const int h = slot - n_heads;
      kv_store_value(l.k_cache, l.kv_dtype, cache_at(h, d), v);
      if (l.k_out != nullptr) l.k_out[(t * l.shape.n_kv_heads + h) * head_dim + d] = v;
    }
  };
  auto store_v = [&](int h, int d, float v) { kv_store_value(l.v_cache, l.kv_dtype, cache_at(h, d), v); };
  const int n_slots = n_heads + 2 * l.shape.n_kv_heads, first = int(blockIdx.y) * slots_per_block;
  rotary_apply<kMode>(l.qkv + t * l.qkv_stride, l.shape, true, cs, first, min(first + slots_per_block, n_slots), store_qk,
                      store_v);
}

template <RotaryMode kMode>
void launch(const Layout& l, int64_t n_tokens, const int32_t* first_position, cudaStream_t stream) {
  const size_t shared = sizeof(float) * size_t(rotary_shared_floats(kMode, l.shape.rotary_dim));
  const int n_slots = l.shape.n_heads + 2 * l.shape.n_kv_heads;
  const int slots_per_block = rotary_slots_per_block(n_tokens, n_slots);
  const dim3 grid(unsigned(n_tokens), unsigned((n_slots + slots_per_block - 1) / slots_per_block));
  launch_pdl(rotary_kv_append_kernel<kMode>, grid, dim3(kThreads), shared, stream, l, first_position, slots_per_block);
}

}  // namespace

void check_rotary(RotaryMode mode, int rotary_dim, int head_dim, float theta, float position_scale) {
  if (mode == RotaryMode::None) return;
  KILN_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= head_dim,
             "cuda rotary: rotary_dim {} must be even and in (0, head_dim {}]", rotary_dim, head_dim);
  KILN_CHECK(theta > 0 && std::isfinite(theta), "cuda rotary: theta is {}, it must be positive", theta);
  KILN_CHECK(position_scale > 0 && std::isfinite(position_scale),
             "cuda rotary: position_scale is {}, it must be positive", position_scale);
}

void rotary_kv_append(const RotaryAppendArgs& a) {
  KILN_CHECK(a.n_tokens >= 0 && a.n_tokens < (int64_t(1) << 31) && a.n_heads > 0 && a.n_kv_heads > 0 &&
                 a.head_dim > 0 && a.n_heads + 2 * a.n_kv_heads <= 65535,
             "cuda rotary: bad shape [{}, {} + {}, {}]", a.n_tokens, a.n_heads, a.n_kv_heads, a.head_dim);
  KILN_CHECK(a.qkv_stride >= int64_t(a.n_heads + 2 * a.n_kv_heads) * a.head_dim,
             "cuda rotary: qkv rows of {} values cannot hold {} + 2 x {} heads of {}", a.qkv_stride, a.n_heads,
             a.n_kv_heads, a.head_dim);
  check_rotary(a.mode, a.rotary_dim, a.head_dim, a.theta, a.position_scale);
  if (a.n_tokens == 0) return;
  KILN_CHECK(a.qkv != nullptr && a.q_out != nullptr && a.k_cache != nullptr && a.v_cache != nullptr &&
                 a.first_position != nullptr && a.kv_stride >= a.n_tokens,
             "cuda rotary: null input, output, cache or position, or a cache of {} positions for {} tokens",
             a.kv_stride, a.n_tokens);
  const Layout l{a.qkv,       a.qkv_stride, a.q_out, a.k_out, a.k_cache, a.v_cache, a.kv_stride, a.kv_dtype,
                 {a.n_heads, a.n_kv_heads, a.head_dim, a.rotary_dim, double(a.theta), double(a.position_scale)}};
  switch (a.mode) {
    case RotaryMode::None: launch<RotaryMode::None>(l, a.n_tokens, a.first_position, a.stream); break;
    case RotaryMode::RotateHalf: launch<RotaryMode::RotateHalf>(l, a.n_tokens, a.first_position, a.stream); break;
    case RotaryMode::RotateEveryTwo: launch<RotaryMode::RotateEveryTwo>(l, a.n_tokens, a.first_position, a.stream); break;
  }
}

}  // namespace kiln::cuda
