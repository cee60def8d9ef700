// For the entry points that end in a conversion (GGUF, Hugging Face folder): its checks, and every
// tensor small enough to read quickly read as the writer would read it.
#pragma once

#include <vector>

#include "convert/conversion.h"

namespace kiln::fuzz {

inline void check_and_read_small_tensors(const Conversion& conversion) {
  check_conversion(conversion);
  std::vector<float> out;
  for (const SourceTensor& t : conversion.tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.dims) numel *= uint64_t(d);
    if (numel > (uint64_t(1) << 16)) continue;
    out.assign(numel, 0.0f);
    t.read(out.data());
  }
}

}  // namespace kiln::fuzz
