// Compiles the functions that follow for AVX2 + FMA + F16C, until target_end.h (see
// target_avx512_begin.h for why it comes after every standard header).
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
