// CRC-32C (Castagnoli), with the SSE4.2 instruction where the CPU has it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln {

// Continues a running checksum: crc32c(b, crc32c(a)) == crc32c(a + b). Start from 0.
uint32_t crc32c(const void* data, size_t bytes, uint32_t crc = 0);

}  // namespace kiln
