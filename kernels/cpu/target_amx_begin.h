// Compiles the functions that follow for AVX-512 with BF16 and the AMX tile instructions (bf16 and int8), until
// target_end.h; the same rules as target_avx512_begin.h. Callers reach these functions only at
// CpuLevel::Amx, which cpu_level_supported() offers once the OS has granted the tile state.
#if defined(__clang__)
#pragma clang attribute push(                                                                                   \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,amx-tile,amx-bf16,amx-int8,avx2,fma," \
                          "f16c"))),                                                                            \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,amx-tile,amx-bf16,amx-int8,avx2,fma,f16c")
#endif
