#include "kernels/cpu/cpu_level.h"

#include <algorithm>
#include <cstdlib>

#include "engine/error.h"
#include "kernels/cpu/simd_config.h"

#if KILN_X86_SIMD
#include <cpuid.h>
#endif

namespace kiln {

std::string_view cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::Scalar: return "scalar";
    case CpuLevel::Avx2: return "avx2";
    case CpuLevel::Avx512: return "avx512";
  }
  return "unknown";
}

CpuLevel cpu_level_from_name(std::string_view name) {
  for (CpuLevel level : {CpuLevel::Scalar, CpuLevel::Avx2, CpuLevel::Avx512})
    if (cpu_level_name(level) == name) return level;
  fail("unknown CPU level '{}': use scalar, avx2 or avx512", name);
}

namespace {

#if KILN_X86_SIMD
// The CPU must have the instructions (cpuid) and the OS must save their registers (XCR0 via xgetbv).
CpuLevel detect_supported_level() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return CpuLevel::Scalar;
  const bool fma = ecx & (1u << 12), osxsave = ecx & (1u << 27), avx = ecx & (1u << 28), f16c = ecx & (1u << 29);
  if (!osxsave || !avx) return CpuLevel::Scalar;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0x6) != 0x6) return CpuLevel::Scalar;  // SSE and AVX state
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return CpuLevel::Scalar;
  const bool avx2 = ebx & (1u << 5);
  if (!(avx2 && fma && f16c)) return CpuLevel::Scalar;
  const bool avx512 = (ebx & (1u << 16)) && (ebx & (1u << 17)) && (ebx & (1u << 30)) && (ebx & (1u << 31)) &&
                      (ecx & (1u << 11));  // F, DQ, BW, VL, VNNI
  const bool os_avx512 = (xcr0_lo & 0xe0) == 0xe0;  // opmask and the upper ZMM state
  return avx512 && os_avx512 ? CpuLevel::Avx512 : CpuLevel::Avx2;
}
#else
CpuLevel detect_supported_level() { return CpuLevel::Scalar; }
#endif

}  // namespace

CpuLevel cpu_level_supported() {
  static const CpuLevel level = detect_supported_level();  // cpuid is slow under a hypervisor
  return level;
}

std::vector<CpuLevel> cpu_levels_supported() {
  std::vector<CpuLevel> levels;
  for (int level = 0; level <= int(cpu_level_supported()); ++level) levels.push_back(CpuLevel(level));
  return levels;
}

CpuLevel cpu_level_capped(std::string_view cap) {
  if (cap.empty()) return cpu_level_supported();
  return std::min(cpu_level_supported(), cpu_level_from_name(cap));
}

CpuLevel cpu_level_default() {
  static const CpuLevel level = [] {
    const char* cap = std::getenv("KILN_CPU_LEVEL");
    return cpu_level_capped(cap != nullptr ? cap : "");
  }();
  return level;
}

}  // namespace kiln
