// The persistent decode step's buffered feed (persistent_decode_kernel.cuh): each warp copies whole units of
// rows of its next matmul into its own buffer in shared memory by 16-byte cp.async copies, started before it
// waits at the barrier. For small models, whose rows fit a warp's share of shared memory (SmolLM2,
// TinyLlama): their stages are a few rows a warp, so the copies' latency is what counts.
#include "kernels/cuda/bulk_copy.cuh"
#include "kernels/cuda/persistent_decode_kernel.cuh"

namespace kiln::cuda::persistent_detail {
namespace {

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// This warp's place when a stage's work is dealt out: consecutive items go to consecutive blocks, so that
// a stage with less work than warps spreads it over the multiprocessors rather than filling the first ones.
__device__ __forceinline__ int warp_slot() { return int(threadIdx.x) / 32 * int(gridDim.x) + int(blockIdx.x); }
template <int kWarps>
__device__ __forceinline__ int warp_slots() { return int(gridDim.x) * kWarps; }

// Shared bytes of a weight row of k values in a warp's buffer (WeightRows).
__host__ __device__ inline int row_slot_bytes(int k, int group_size, bool int8) {
  if (!int8) return 2 * k;
  const int scale_words = (2 * (k / group_size) + 5) / 4;  // up to 2 bytes of skew, then the scales
  return k + (4 * scale_words + 15) / 16 * 16;
}

// A matmul's weight rows: f16, or int8 with an f16 scale for each group of group_size values (a multiple of
// 16, so a 16-byte chunk has one). In a warp's buffer a row takes its bytes, then (int8) the aligned
// 4-byte words that hold its scales, padded to 16 bytes.
template <bool kInt8>
struct WeightRows {
  const void* data;
  const uint16_t* scales;  // int8: [rows, k / group_size]
  int k, group_size;

  __device__ int row_bytes() const { return kInt8 ? k : 2 * k; }
  __device__ int groups() const { return k / group_size; }
  __device__ int slot_bytes() const { return row_slot_bytes(k, group_size, kInt8); }
  // Bytes before the row's first scale in its first word (the scales' array is 4-byte aligned).
  __device__ int scale_skew(int row) const { return (row * groups() * 2) & 3; }

  // Starts copying row `row` into `to`. The last word of a row's scales may reach 2 bytes past the array:
  // the forward pads every allocation to 256 bytes.
  __device__ void copy(int row, char* to, int lane) const {
    const char* from = static_cast<const char*>(data) + int64_t(row) * row_bytes();
    for (int c = lane; c < row_bytes() / 16; c += 32) copy16_async(to + c * 16, from + c * 16);
    if constexpr (kInt8) {
      const char* first = reinterpret_cast<const char*>(scales + int64_t(row) * groups()) - scale_skew(row);
      const int words = (scale_skew(row) + 2 * groups() + 3) / 4;
      for (int i = lane; i < words; i += 32) copy4_async(to + row_bytes() + 4 * i, first + 4 * i);
    }
  }

  // sum + the products of chunk c of a row (its copy at `slot`) with its x values.
  __device__ __forceinline__ float dot(const char* slot, int row, int c, const XChunk<kInt8>& x, float sum) const {
    const uint4 raw = *reinterpret_cast<const uint4*>(slot + c * 16);
    float scale = 0.0f;
    if constexpr (kInt8) {
      const __half* row_scales = reinterpret_cast<const __half*>(slot + row_bytes() + scale_skew(row));
      scale = __half2float(row_scales[c * 16 / group_size]);
    }
    return chunk_dot<kInt8>(raw, x, scale, sum);
  }
};

// A warp's share of a matmul stage: units first, first + stride, ... below n_units, each kRows weight rows
// (whose indices row_of(unit, r) gives), copied into the warp's shared buffer a group of `per_group` units
// at a time.
template <int kRows, bool kInt8, int kWarps, typename RowOf>
struct MatmulStage {
  WeightRows<kInt8> w;
  int n_units;
  RowOf row_of;

  __device__ int first() const { return warp_slot(); }
  __device__ int stride() const { return warp_slots<kWarps>(); }
  __device__ int count() const { return first() < n_units ? ceil_div(n_units - first(), stride()) : 0; }
  __device__ int per_group(int warp_bytes) const { return warp_bytes / (kRows * w.slot_bytes()); }

  // Starts the copies of group `group` (asynchronous: the warp waits for them in run()).
  __device__ void load(char* buffer, int warp_bytes, int group) const {
    const int lane = int(threadIdx.x) % 32, per = per_group(warp_bytes), n = count();
    for (int j = 0; j < per && group * per + j < n; ++j) {
      const int unit = first() + (group * per + j) * stride();
#pragma unroll
      for (int r = 0; r < kRows; ++r) w.copy(row_of(unit, r), buffer + (j * kRows + r) * w.slot_bytes(), lane);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
  }

  // y = W · xs for every unit of the warp (xs: k inputs in x_slot order), then epilogue(unit, y) on lane 0.
  // Group 0 was loaded before (load(..., 0)) when `loaded`.
  template <typename Epilogue>
  __device__ void run(const float* xs, char* buffer, int warp_bytes, bool loaded, Epilogue epilogue) const {
    const int lane = int(threadIdx.x) % 32, chunks = w.row_bytes() / 16, per = per_group(warp_bytes), n = count();
    for (int group = 0; group * per < n; ++group) {
      if (group > 0 || !loaded) load(buffer, warp_bytes, group);
      asm volatile("cp.async.wait_all;" ::: "memory");
      __syncwarp();
      for (int j = 0; j < per && group * per + j < n; ++j) {
        const int unit = first() + (group * per + j) * stride();
        int rows[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) rows[r] = row_of(unit, r);
        // The rows of a unit share each x value read from shared memory (its bandwidth bounds this loop).
        float y[kRows] = {};
        for (int c = lane; c < chunks; c += 32) {
          const XChunk<kInt8> x(xs, w.k, c);
#pragma unroll
          for (int r = 0; r < kRows; ++r) y[r] = w.dot(buffer + (j * kRows + r) * w.slot_bytes(), rows[r], c, x, y[r]);
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) y[r] = warp_sum(y[r]);
        if (lane == 0) epilogue(unit, y);
      }
      __syncwarp();  // every lane has read the group before the next one overwrites it
    }
  }
};

template <int kRows, bool kInt8, int kWarps, typename RowOf>
__device__ MatmulStage<kRows, kInt8, kWarps, RowOf> matmul_stage(const PersistentMatrix& m, int k, int group_size,
                                                                 int n_units, RowOf row_of) {
  return {{m.data, m.scales, k, group_size}, n_units, row_of};
}

// Row r of a unit of the matmul `kind`, for MatmulStage.
struct KindRows {
  Matmuls mm;
  int kind;
  __device__ int operator()(int unit, int r) const { return mm.row(kind, unit, r); }
};

template <bool kInt8, int kWarps>
struct BufferedFeed {
  Matmuls mm;
  char* buffer;  // this warp's
  int warp_bytes;

  __device__ BufferedFeed(const Params& p, const Matmuls& matmuls, char* shared)
      : mm(matmuls), buffer(shared + size_t(threadIdx.x / 32) * p.warp_bytes), warp_bytes(p.warp_bytes) {}

  template <int kRows>
  __device__ MatmulStage<kRows, kInt8, kWarps, KindRows> stage(int kind, int layer) const {
    return matmul_stage<kRows, kInt8, kWarps>(mm.matrix(kind, layer), mm.k(kind), mm.group_size, mm.units(kind),
                                              KindRows{mm, kind});
  }
  __device__ void begin() const { prefetch(kQkv, 0); }
  __device__ void prefetch(int kind, int layer) const {
    if (kind == kQkv || kind == kUp) stage<2>(kind, layer).load(buffer, warp_bytes, 0);
    else stage<1>(kind, layer).load(buffer, warp_bytes, 0);
  }
  template <int kRows, typename Epilogue>
  __device__ void run(int kind, int layer, const float* xs, Epilogue epilogue) const {
    stage<kRows>(kind, layer).run(xs, buffer, warp_bytes, true, epilogue);
  }
};

// A warp's buffer: what the block has left after the fixed part, in 16-byte steps.
int warp_buffer_bytes(int max_k, int rotary_dim, int head_dim, int n_layers, int warps) {
  const int fixed_bytes = fixed_floats(max_k, rotary_dim, head_dim, n_layers) * int(sizeof(float));
  const int left = device_limits().smem_optin - fixed_bytes;
  return left / warps / 16 * 16;
}

// The warps of a block (see kMaxWarps): the most units a stage deals to a block (QKV: pairs of rows,
// gate/up: a gate and an up row, the projections: a row).
int block_warps(int dim, int n_heads, int n_kv_heads, int head_dim, int ffn) {
  const int most = std::max({(n_heads + 2 * n_kv_heads) * head_dim / 2, dim, ffn});
  const int multiprocessors = device_limits().multiprocessors;
  return (most + multiprocessors - 1) / multiprocessors <= kFewWarps ? kFewWarps : kMaxWarps;
}

// The largest unit a warp's buffer must hold: two rows of dim (QKV, gate/up), a row of q_dim or ffn.
int largest_unit_bytes(int dim, int q_dim, int ffn, int group_size, bool int8) {
  return std::max({2 * row_slot_bytes(dim, group_size, int8), row_slot_bytes(q_dim, group_size, int8),
                   row_slot_bytes(ffn, group_size, int8)});
}

}  // namespace

bool buffered_fits(const PersistentShape& s) {
  const int warps = block_warps(s.dim, s.n_heads, s.n_kv_heads, s.head_dim, s.ffn), q_dim = s.n_heads * s.head_dim;
  // the rotary angles take at most head_dim floats
  return warp_buffer_bytes(std::max({s.dim, q_dim, s.ffn}), s.head_dim, s.head_dim, s.n_layers, warps) >=
         largest_unit_bytes(s.dim, q_dim, s.ffn, s.group_size, s.int8);
}

void launch_buffered(Params p) {
  const int warps = block_warps(p.a.dim, p.a.n_heads, p.a.n_kv_heads, p.a.head_dim, p.a.ffn);
  p.warp_bytes = warp_buffer_bytes(p.max_k, p.a.rotary_dim, p.a.head_dim, p.a.n_layers, warps);
  const size_t shared = size_t(fixed_floats(p.max_k, p.a.rotary_dim, p.a.head_dim, p.a.n_layers)) * sizeof(float) +
                        size_t(warps) * size_t(p.warp_bytes);
  if (warps == kFewWarps) launch_feed<kFewWarps, BufferedFeed>(p, shared);
  else launch_feed<kMaxWarps, BufferedFeed>(p, shared);
}

}  // namespace kiln::cuda::persistent_detail
