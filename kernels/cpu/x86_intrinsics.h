// <immintrin.h> without GCC 12's false -Wuninitialized warnings about its own _mm*_undefined_*()
// helpers (GCC bug 105593), which would otherwise fire wherever a conversion intrinsic is inlined.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif

#include <cstdint>

namespace kiln {

// Prefetches the line at base + offset into L1. The address may lie past the end of the tensor (the
// last tile prefetches what follows it): prefetches never fault, and computing the address as an
// integer keeps the pointer arithmetic in bounds.
inline void prefetch_at(const void* base, int64_t offset) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(base) + uintptr_t(offset)), _MM_HINT_T0);
}

// Decode streams each weight once, and the hardware prefetcher does not ramp up on rows of a few
// hundred bytes read side by side: so each iteration of a GEMV tile prefetches as many bytes of the next
// tile (the next rows, contiguous after the tile's) as it reads of its own.
inline void prefetch_next_tile(const void* tile, int64_t tile_bytes, int64_t offset, int64_t bytes) {
  for (int64_t i = 0; i < bytes; i += 64) prefetch_at(tile, tile_bytes + offset + i);
}

}  // namespace kiln
