// ALiBi head slopes, shared by every backend.
#pragma once

#include <vector>

namespace kiln {

// The standard geometric slopes: for the largest power of two p <= n_heads, 2^(-8 i / p) for i = 1..p;
// the remaining heads take the odd terms 2^(-4 i / p), i = 1, 3, 5, ..., of the sequence for 2p.
std::vector<float> alibi_slopes(int n_heads);  // [n_heads]

}  // namespace kiln
