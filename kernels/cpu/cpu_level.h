// Which SIMD level the CPU kernels run at: chosen at run time, so one generic x86-64 binary uses
// AVX-512 where the CPU has it and still runs on any x86-64 (or, with the scalar level only, elsewhere).
#pragma once

#include <string_view>
#include <vector>

namespace kiln {

enum class CpuLevel {
  Scalar = 0,  // portable C++
  Avx2 = 1,    // AVX2 + FMA + F16C
  Avx512 = 2,  // AVX-512 F/BW/VL/DQ + VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later)
  Amx = 3,     // AVX-512 + BF16 + AMX tiles (Sapphire Rapids and later): prompt matmuls on the tile unit
};

std::string_view cpu_level_name(CpuLevel level);
// "scalar", "avx2", "avx512" or "amx"; throws kiln::Error naming the accepted values otherwise.
CpuLevel cpu_level_from_name(std::string_view name);

// The highest level this CPU and OS can run (the OS must save the AVX-512 registers).
CpuLevel cpu_level_supported();
// Every level this CPU can run, lowest first (tests run each).
std::vector<CpuLevel> cpu_levels_supported();
// cpu_level_supported(), capped by a level name ("" caps nothing); throws on an unknown name.
CpuLevel cpu_level_capped(std::string_view cap);
// The level kernels use by default: cpu_level_capped(KILN_CPU_LEVEL environment variable), so
// KILN_CPU_LEVEL=scalar|avx2|avx512|amx forces a lower level. Read once per process.
CpuLevel cpu_level_default();

}  // namespace kiln
