// The persistent decode step's streamed feed (persistent_decode_kernel.cuh), for models whose rows do not
// fit a warp's share of shared memory (the 7B and 8B shapes): each warp streams its even share of every
// matmul's tiles (two rows), in order, through its own ring of slots of 2 KB row segments, as the
// streamed GEMV does (segment_slot.cuh).
//
// Why a ring that runs across matmuls: the weights never change, so a warp refills each slot it frees with
// its next segment whichever matmul or layer that is. While the block waits at a grid barrier, or a few
// blocks run the attention, its rings hold the next matmul's first weights (~150 KB a multiprocessor), so
// the kernel boundaries of the kernels one by one shrink to the barriers' waits. On an H200, when it came,
// the 7B f16 decode was ~2.5% faster than those kernels and the 8B ~7%.
#include "kernels/cuda/persistent_decode_kernel.cuh"
#include "kernels/cuda/segment_slot.cuh"

namespace kiln::cuda::persistent_detail {
namespace {

using segment_slot::kLoads, segment_slot::kMaxStages, segment_slot::kMinStages, segment_slot::kRows,
    segment_slot::kSegmentBytes, segment_slot::kSegmentVecs, segment_slot::slot_bytes;
constexpr int kBarrierBytes = kMaxWarps * kMaxStages * 8;

// Where a warp's step reads or fills: a chunk of a tile of the matmul `kind` of `layer`, and its slot.
// Steps run over the warp's tiles [tile, end) of each matmul in the order the step runs them, skipping
// matmuls where the warp has none; kind is -1 past the last layer.
struct Cursor {
  int layer = 0, kind = kQkv, tile = 0, end = 0, chunk = 0, n_chunks = 0, slot = 0;

  // Moves to the first matmul at or after (layer, kind) with tiles for this warp.
  __device__ void seek(const Params& p, const Matmuls& mm, int bytes_per_value) {
    const int64_t warps = blockDim.x / 32, index = blockIdx.x * warps + threadIdx.x / 32, all = gridDim.x * warps;
    for (; layer < p.a.n_layers; next_matmul()) {
      const int n = tiles(mm, kind);
      tile = int(n * index / all);
      end = int(n * (index + 1) / all);
      if (tile < end) {
        chunk = 0;
        n_chunks = (mm.k(kind) * bytes_per_value + kSegmentBytes - 1) / kSegmentBytes;
        return;
      }
    }
    kind = -1;
  }
  __device__ void advance(const Params& p, const Matmuls& mm, int bytes_per_value, int n_stages) {
    if (++slot == n_stages) slot = 0;
    if (++chunk < n_chunks) return;
    chunk = 0;
    if (++tile < end) return;
    next_matmul();
    seek(p, mm, bytes_per_value);
  }
  __device__ void next_matmul() {
    if (kind == kDown) {
      kind = kQkv;
      ++layer;
    } else {
      ++kind;
    }
  }

  // Tiles of a matmul: a unit of two rows (QKV, gate/up), or two consecutive rows of the projections.
  __device__ static int tiles(const Matmuls& mm, int kind) {
    return kind == kQkv || kind == kUp ? mm.units(kind) : mm.units(kind) / 2;
  }
  __device__ static int row(const Matmuls& mm, int kind, int tile, int r) {
    return kind == kQkv || kind == kUp ? mm.row(kind, tile, r) : 2 * tile + r;
  }
};

template <bool kInt8, int kFeedWarps>
struct StreamedFeed {
  static constexpr int kBytesPerValue = kInt8 ? 1 : 2;
  static constexpr int kSlotBytes = slot_bytes(kInt8);

  const Params& p;
  Matmuls mm;
  uint64_t* barriers;   // this warp's, one a slot
  unsigned char* ring;  // this warp's n_stages slots
  int n_stages;
  int lane;
  Cursor fill, use;
  uint32_t parity = 0;  // of the slots' barriers in this round over the ring
  float acc[kRows] = {};

  // shared: the warps' barriers, then (128-byte aligned) their rings.
  __device__ StreamedFeed(const Params& params, const Matmuls& matmuls, char* shared)
      : p(params), mm(matmuls), n_stages(params.n_stages), lane(int(threadIdx.x) % 32) {
    const int warp = int(threadIdx.x) / 32;
    barriers = reinterpret_cast<uint64_t*>(shared) + warp * kMaxStages;
    const uintptr_t rings = (reinterpret_cast<uintptr_t>(shared) + kBarrierBytes + 127) / 128 * 128;
    ring = reinterpret_cast<unsigned char*>(rings) + size_t(warp) * n_stages * kSlotBytes;
  }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __device__ void begin() {
    segment_slot::init_barriers<kInt8>(barriers, n_stages);
    fill.seek(p, mm, kBytesPerValue);
    use = fill;
    for (int s = 0; s < n_stages && fill.kind >= 0; ++s) issue();
  }

  // The ring already holds what comes next.
  __device__ void prefetch(int, int) const {}

  template <int kUnitRows, typename Epilogue>
  __device__ void run(int kind, int layer, const float* xs, Epilogue epilogue) {
    const int k = mm.k(kind), row_chunks = k * kBytesPerValue / 16;
    const int shift = kInt8 ? __ffs(mm.group_size) - 1 : 0;
    while (use.kind == kind && use.layer == layer) {
      barrier_wait(&barriers[use.slot], parity);
      const unsigned char* slot = ring + use.slot * kSlotBytes;
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        const int at = u * 32 + lane, c = use.chunk * kSegmentVecs + at;
        if (c >= row_chunks) break;
        const XChunk<kInt8> x(xs, k, c);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const float scale =
              kInt8 ? __half2float(__ushort_as_half(segment_slot::scales(slot, r)[at * 16 >> shift])) : 0.0f;
          acc[r] = chunk_dot<kInt8>(segment_slot::segment(slot, r)[at], x, scale, acc[r]);
        }
      }
      if (use.chunk == use.n_chunks - 1) finish_tile<kUnitRows>(use.tile, epilogue);
      __syncwarp();  // every lane is done with the slot
      if (fill.kind >= 0) issue();
      use.advance(p, mm, kBytesPerValue, n_stages);
      if (use.slot == 0) parity ^= 1u;
    }
  }

 private:
  // The tile's sums, then its units' epilogues on lane 0: one unit (QKV, gate/up), or two rows.
  template <int kUnitRows, typename Epilogue>
  __device__ void finish_tile(int tile, Epilogue& epilogue) {
    float y[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      y[r] = warp_sum(acc[r]);
      acc[r] = 0.0f;
    }
    if (lane != 0) return;
    if constexpr (kUnitRows == kRows) {
      epilogue(tile, y);
    } else {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float one[1] = {y[r]};
        epilogue(kRows * tile + r, one);
      }
    }
  }

  // Starts the copies of the fill cursor's step into its slot and moves it on.
  __device__ void issue() {
    const PersistentMatrix& m = mm.matrix(fill.kind, fill.layer);
    const int row_bytes = mm.k(fill.kind) * kBytesPerValue, left = row_bytes - fill.chunk * kSegmentBytes;
    const uint32_t bytes = uint32_t(left < kSegmentBytes ? left : kSegmentBytes);
    unsigned char* slot = ring + fill.slot * kSlotBytes;
    const char* from = lane < kRows ? static_cast<const char*>(m.data) +
                                          int64_t(Cursor::row(mm, fill.kind, fill.tile, lane)) * row_bytes +
                                          fill.chunk * kSegmentBytes
                                    : nullptr;
    segment_slot::fill_segments(slot, &barriers[fill.slot], kRows, from, bytes);
    if constexpr (kInt8) {
      const int groups = mm.k(fill.kind) / mm.group_size, segment_groups = kSegmentBytes / mm.group_size;
      const int first_group = fill.chunk * segment_groups;
      const uint16_t* scale_rows[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        scale_rows[r] = m.scales + int64_t(Cursor::row(mm, fill.kind, fill.tile, r)) * groups + first_group;
      segment_slot::fill_scales(slot, &barriers[fill.slot], scale_rows,
                                segment_slot::scale_pairs(fill.chunk, groups, segment_groups));
    }
    fill.advance(p, mm, kBytesPerValue, n_stages);
  }
#else
  __device__ void begin() {}
  __device__ void prefetch(int, int) const {}
  template <int kUnitRows, typename Epilogue>
  __device__ void run(int, int, const float*, Epilogue) {}
#endif
};

// Shared bytes of the step: the fixed part (fixed_floats), the warps' barriers, then their rings of n_stages.
size_t shared_bytes(int fixed, bool int8, int n_stages, int warps) {
  // The rings start 128-byte aligned after the barriers, wherever the dynamic shared memory starts.
  return size_t(fixed) * sizeof(float) + kBarrierBytes + 128 + size_t(n_stages) * warps * slot_bytes(int8);
}

int stages_that_fit(int fixed, bool int8, int warps) {
  const size_t most = size_t(device_limits().smem_optin);
  const size_t left = most - std::min(most, shared_bytes(fixed, int8, 0, warps));
  return int(std::min<size_t>(left / (size_t(warps) * slot_bytes(int8)), kMaxStages));
}

// Warps a block. With f16 weights, 8 warps whose rings take 4-5 stages (16-20 KB in flight a warp) beat 16
// of 2 (H200: 7B +2.4%, 8B +1.6%; 6, 10 and 12 warps were slower): a warp that ends a stage alone streams
// its last tiles no faster than its ring lets it. The int8 products need 16 warps' instructions (8: -14%).
constexpr int kF16Warps = 8, kInt8Warps = kMaxWarps;
int streamed_warps(bool int8) { return int8 ? kInt8Warps : kF16Warps; }

int fixed_of(const Params& p) { return fixed_floats(p.max_k, p.a.rotary_dim, p.a.head_dim, p.a.n_layers); }

}  // namespace

bool streamed_fits(const PersistentShape& s) {
  if (device_limits().major < 9) return false;  // bulk copies and their barriers
  const int q_dim = s.n_heads * s.head_dim;
  if (s.int8) {
    // Whole groups a segment, their scales copied in pairs: groups of 16 values up to half a segment, a
    // power of two, and an even number of them in every row.
    const int g = s.group_size;
    if (g < 16 || g > kSegmentBytes / 2 || (g & (g - 1)) != 0) return false;
    for (int k : {s.dim, q_dim, s.ffn})
      if (k % g != 0 || (k / g) % 2 != 0) return false;
  }
  // the rotary angles take at most head_dim floats
  const int fixed = fixed_floats(std::max({s.dim, q_dim, s.ffn}), s.head_dim, s.head_dim, s.n_layers);
  return stages_that_fit(fixed, s.int8, streamed_warps(s.int8)) >= kMinStages;
}

void launch_streamed(Params p) {
  const int warps = streamed_warps(p.a.int8);
  p.n_stages = stages_that_fit(fixed_of(p), p.a.int8, warps);
  KILN_CHECK(p.n_stages >= kMinStages, "cuda persistent_decode: the streamed weights' rings do not fit");
  const size_t shared = shared_bytes(fixed_of(p), p.a.int8, p.n_stages, warps);
  if (p.a.int8) launch_weights<true, kInt8Warps, StreamedFeed>(p, shared);
  else launch_weights<false, kF16Warps, StreamedFeed>(p, shared);
}

}  // namespace kiln::cuda::persistent_detail
