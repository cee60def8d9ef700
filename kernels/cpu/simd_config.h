// Whether the x86 SIMD kernels are built. Elsewhere (or with KILN_CPU_PORTABLE_ONLY, which lets an x86
// host check the portable build) only the scalar level exists.
#pragma once

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(KILN_CPU_PORTABLE_ONLY)
#define KILN_X86_SIMD 1
#else
#define KILN_X86_SIMD 0
#endif
