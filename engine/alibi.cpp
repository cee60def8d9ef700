#include "engine/alibi.h"

#include <cmath>

#include "engine/error.h"

namespace kiln {

std::vector<float> alibi_slopes(int n_heads) {
  KILN_CHECK(n_heads >= 1, "ALiBi needs at least one head, got {}", n_heads);
  int p = 1;
  while (p * 2 <= n_heads) p *= 2;
  std::vector<float> slopes;
  slopes.reserve(size_t(n_heads));
  for (int i = 1; i <= p; ++i) slopes.push_back(float(std::exp2(-8.0 * i / p)));
  for (int i = 1; int(slopes.size()) < n_heads; i += 2) slopes.push_back(float(std::exp2(-4.0 * i / p)));
  return slopes;
}

}  // namespace kiln
