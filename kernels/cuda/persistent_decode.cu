#include "kernels/cuda/persistent_decode.h"

#include <optional>

#include "kernels/cuda/persistent_decode_kernel.cuh"

namespace kiln::cuda {
namespace {

// The feed a step of these shapes takes (the one asked for, or Auto's choice), or none when it does not fit.
std::optional<PersistentFeed> feed_for(const PersistentShape& s, PersistentFeed feed) {
  if (feed != PersistentFeed::Streamed && persistent_detail::buffered_fits(s)) return PersistentFeed::Buffered;
  if (feed != PersistentFeed::Buffered && persistent_detail::streamed_fits(s)) return PersistentFeed::Streamed;
  return std::nullopt;
}

PersistentShape shape_of(const PersistentDecodeArgs& a) {
  return {a.n_layers, a.dim, a.n_heads, a.n_kv_heads, a.head_dim, a.ffn, a.int8, a.group_size};
}

// Whether the kernel handles these shapes and cache, shared memory aside (feed_for).
bool shapes_supported(const PersistentShape& s, KvDType kv_dtype) {
  const auto [n_layers, dim, n_heads, n_kv_heads, head_dim, ffn, int8, group_size] = s;
  const bool head_dim_ok = head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128 ||
                           (head_dim == 256 && kv_dtype == KvDType::F16);
  if (!head_dim_ok || (kv_dtype != KvDType::F16 && kv_dtype != KvDType::F32)) return false;
  if (n_layers <= 0 || dim <= 0 || ffn <= 0 || n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
    return false;
  const int q_dim = n_heads * head_dim;
  if (dim % 8 != 0 || ffn % 8 != 0 || q_dim % 8 != 0) return false;
  // int8: a 16-byte chunk of a row has one scale
  return !int8 || (group_size >= 16 && group_size % 16 == 0 && dim % group_size == 0 && q_dim % group_size == 0 &&
                   ffn % group_size == 0);
}

}  // namespace

bool persistent_decode_supported(const PersistentShape& s, KvDType kv_dtype, PersistentFeed feed) {
  return shapes_supported(s, kv_dtype) && feed_for(s, feed).has_value();
}

size_t persistent_decode_scratch_floats(int dim, int n_heads, int head_dim, int ffn) {
  // the splits' parts: a block each at most
  return size_t(persistent_detail::stage_outputs_end(dim, n_heads, head_dim, ffn)) +
         size_t(persistent_detail::split_counts_floats(n_heads)) +
         size_t(device_limits().multiprocessors) * (size_t(head_dim) + 2);
}

void persistent_decode(const PersistentDecodeArgs& a) {
  KILN_CHECK(a.layers != nullptr && a.n_layers >= 1 && a.x != nullptr && a.scratch != nullptr &&
                 a.position != nullptr && a.k_cache != nullptr && a.v_cache != nullptr,
             "cuda persistent_decode: null input, output or scratch");
  const PersistentShape shape = shape_of(a);
  const std::optional<PersistentFeed> feed =
      shapes_supported(shape, a.kv_dtype) ? feed_for(shape, a.feed) : std::nullopt;
  KILN_CHECK(feed.has_value(),
             "cuda persistent_decode: dim {}, {} heads ({} kv) of {}, ffn {}, {} weights (groups of {}) and a {} cache "
             "are not supported",
             a.dim, a.n_heads, a.n_kv_heads, a.head_dim, a.ffn, a.int8 ? "int8" : "f16", a.group_size,
             kv_dtype_name(a.kv_dtype));
  KILN_CHECK(a.mode == RotaryMode::None || (a.rotary_dim > 0 && a.rotary_dim % 2 == 0 && a.rotary_dim <= a.head_dim),
             "cuda persistent_decode: rotary_dim {} for head_dim {}", a.rotary_dim, a.head_dim);
  // the staging reads float4s (the norms' weights sit at 256-byte offsets of the forward's weight allocation)
  const auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  KILN_CHECK(aligned16(a.x) && aligned16(a.scratch),
             "cuda persistent_decode: x and the scratch must be 16-byte aligned");
  KILN_CHECK(a.n_ctx >= 1 && a.window >= 0 && a.eps >= 0, "cuda persistent_decode: context {}, window {}", a.n_ctx,
             a.window);
  persistent_detail::Params p{a, 0, std::max({a.dim, a.n_heads * a.head_dim, a.ffn}), 0};
  if (a.mode == RotaryMode::None) p.a.rotary_dim = 0;
  if (feed == PersistentFeed::Buffered) persistent_detail::launch_buffered(p);
  else persistent_detail::launch_streamed(p);
}

}  // namespace kiln::cuda
