// The batched CUDA backend: the shared CUDA forward (cuda_forward.h) over rows of many sequences, with a
// paged KV pool on the GPU (16-position blocks, the accounting in KvBlockTable). Each step uploads its
// rows and the block tables in one copy, runs every matmul over all rows, stores each row's rotated keys
// at its own position, and computes logits only for the rows asked, gathered before the LM head. With an
// f16 or fp8 pool, the prompt rows of each sequence attend in tiles on the tensor cores (paged_prompt_attention),
// the other rows one by one. A step shape seen before (rows, logit rows, whether they need gathering, prompt
// tiles, runs of prompt rows: decode steps repeat theirs) replays a CUDA graph captured the second time it
// comes.
//
// Batch invariance: a row's logits are bit for bit the same whatever else the step holds. Every matmul
// runs as cuBLAS calls of fixed shapes (matmul_rows rows, or prompt_matmul_rows for a run of prompt rows,
// the last call of a run padded), so the library's choice of algorithm never changes with the step; the
// attention splits a row's keys at fixed positions and computes a prompt row alike in any tile; every other
// kernel computes a row from that row alone.
#pragma once

#include <memory>

#include "engine/backend.h"
#include "engine/batch_backend.h"
#include "kernels/cuda/kv_dtype.h"

namespace kiln {

struct CudaBatchOptions {
  int device = 0;         // CUDA device index
  // The KV pool's type: f16 holds twice the positions of f32 in the same memory, fp8 four times.
  cuda::KvDType kv_dtype = cuda::KvDType::F32;
  bool use_graph = true;  // false: launch every kernel of every step one by one (for comparison)
  // Rows of every matmul call (more than 8): fewer read the weights more often in long steps, more waste
  // work on short ones. Rows are alike whatever the step only between backends of the same value.
  int64_t matmul_rows = 64;
  // Rows of every matmul call over a step's prompt rows (0: matmul_rows): a long prompt chunk reads the weights
  // once for every prompt_matmul_rows rows. Prompt rows always take these calls, the other rows matmul_rows,
  // so rows stay alike whatever the step (CudaForwardOptions::prompt_rows; models that cannot take it run
  // every row in matmul_rows calls).
  int64_t prompt_matmul_rows = 256;
  // Keys of each split of a decode row's attention (split at fixed positions, then merged). 0: 2,048 when
  // the backend has 64 sequence slots or more (many rows give blocks enough: a 7B step of 256 sequences at
  // ~650 positions on an H200 took 24.3 ms of attention with 256, 22.4 with 1,024; kiln batch's 1,000
  // mixed prompts at -c 1280 ran 5,984 / 6,141 / 6,295 t/s with 512 / 1,024 / 2,048), else 256 (more
  // blocks for a few long sequences). Like matmul_rows, rows are alike whatever the step only between
  // backends of the same value.
  int64_t attention_chunk_keys = 0;
  // Per-stage timing (as BackendOptions::stage_timer): a step run while it is enabled runs without its
  // graph and reports each stage's time.
  std::shared_ptr<StageTimer> stage_timer;
};

// CudaBatchOptions::matmul_rows for a backend of max_sequences slots: as many rows as a decode step can hold,
// 32, or 64 to 256 in steps of 64. A call of 256 rows reads the weights once for four times the rows (7B on an
// H200, 256 sequences: 20.5K generated t/s against 10.1K with 64-row calls); a step with fewer rows pays for
// the padding. 32-row calls split the output and down projections over their inputs (7B, 32 sequences:
// 6,594-6,620 against 6,405-6,418 generated t/s with 64-row calls).
int64_t matmul_rows_for(int64_t max_sequences);

// options.kv_bytes: the pool's size (rounded down to whole blocks, and never more than max_sequences full
// contexts); 0 takes 90% of what the GPU has free beside the weights and workspace. Throws kiln::Error when
// no GPU is present or the weights, workspace and pool do not fit its free memory (the message gives the
// bytes needed and free).
[[nodiscard]] std::unique_ptr<BatchBackend> make_cuda_batch_backend(const KilnFile& file,
                                                                    const BatchBackendOptions& options,
                                                                    const CudaBatchOptions& cuda = {});
// The weights' host views are only read during the call (they are copied to the device).
[[nodiscard]] std::unique_ptr<BatchBackend> make_cuda_batch_backend(const ModelConfig& config, const Weights& weights,
                                                                    const BatchBackendOptions& options,
                                                                    const CudaBatchOptions& cuda = {});

}  // namespace kiln
