// Compiles the functions that follow for AVX-512 (F/BW/VL/DQ + VNNI) and AVX2/FMA/F16C, until
// target_end.h. Include it after every standard header: only this file's own functions get the target,
// so no inline function shared with generic code is ever emitted with AVX-512 instructions.
// Callers reach these functions only after cpu_level_supported() said the CPU has them.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
#endif
