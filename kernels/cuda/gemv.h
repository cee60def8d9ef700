// The decode GEMV behind cuda::matmul (up to kGemvMaxTokens tokens), every weight dtype.
//
// Each warp streams a tile of rows (two for one token, four for several) with 16-byte loads, the next
// chunk's loads issued before the current one is multiplied, and accumulates in f32. The grid is as
// many blocks as fit on the device at once; they walk the tiles. x is read where it is used (f16, bf16
// and one token) or staged once per block in shared memory: normalised there when args.norm asks, and
// for int8 weights quantized per weight group exactly as kernels/cpu/quantize.h does, so that the
// product is an integer dot product (__dp4a) scaled per group as on the CPU. A block's first weight
// loads are in flight while it stages x. One token of int8 weights in the register GEMV, given a GEMM
// context, has x normalised and quantized once by a one-block kernel into the context's scratch, which
// every block then reads instead of staging x. The epilogue adds bias and residual or applies the gated
// activation. Tokens that do not fit shared memory together run in several passes.
//
// One token of f16, bf16 or int8 weights of 16 MiB or more (the decode of large models) runs the
// streamed GEMV of kernels/cuda/gemv_streamed.cu on sm_90 where x and its stages fit shared memory: each
// warp's rows come in through its own ring of bulk copies (TMA), several in flight while it multiplies
// one.
//
// Launched with programmatic dependent launch on sm_90: a GEMV may start while the kernel before it in
// the stream finishes; it reads only weights before waiting for that kernel (griddepcontrol.wait), and
// lets the kernel after it start early in turn. Kernels launched without the attribute are unaffected.
#pragma once

#include "kernels/cuda/matmul.h"

namespace kiln::cuda {

// args checked by matmul; n_tokens in 1..kGemvMaxTokens.
void gemv(const MatmulArgs& args);

}  // namespace kiln::cuda
