#include "kernels/cpu/cpu_level.h"

#include <algorithm>
#include <cstdlib>

#include "engine/error.h"
#include "kernels/cpu/simd_config.h"

#if KILN_X86_SIMD
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace kiln {

std::string_view cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::Scalar: return "scalar";
    case CpuLevel::Avx2: return "avx2";
    case CpuLevel::Avx512: return "avx512";
    case CpuLevel::Amx: return "amx";
  }
  return "unknown";
}

CpuLevel cpu_level_from_name(std::string_view name) {
  for (CpuLevel level : {CpuLevel::Scalar, CpuLevel::Avx2, CpuLevel::Avx512, CpuLevel::Amx})
    if (cpu_level_name(level) == name) return level;
  fail("unknown CPU level '{}': use scalar, avx2, avx512 or amx", name);
}

namespace {

#if KILN_X86_SIMD
// AMX needs the tile, BF16 and INT8 instructions (cpuid 7.0 edx, and AVX512_BF16 in 7.1 eax for the
// activations' conversion), the OS saving the tile state (XCR0 bits 17-18), and Linux's per-process
// permission for the 8 KB of tile data, which the first request grants.
bool amx_usable(unsigned leaf7_edx) {
  const bool amx_bf16 = leaf7_edx & (1u << 22), amx_tile = leaf7_edx & (1u << 24), amx_int8 = leaf7_edx & (1u << 25);
  unsigned eax, ebx, ecx, edx;
  if (!(amx_bf16 && amx_tile && amx_int8) || !__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) || !(eax & (1u << 5)))
    return false;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & (3u << 17)) != (3u << 17)) return false;
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

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
  if (!(avx512 && os_avx512)) return CpuLevel::Avx2;
  return amx_usable(edx) ? CpuLevel::Amx : CpuLevel::Avx512;
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
