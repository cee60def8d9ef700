#include "tokenizer/unicode_class.h"

#include <algorithm>
#include <array>
#include <iterator>

namespace kiln {

namespace {

struct ClassRange {
  uint32_t first, last;
  UnicodeClass cls;
};

constexpr ClassRange kRanges[] = {
#include "tokenizer/unicode_tables.inc"
};

constexpr std::array<UnicodeClass, 128> make_ascii_table() {
  std::array<UnicodeClass, 128> table{};
  for (const ClassRange& r : kRanges) {
    for (uint32_t cp = r.first; cp <= r.last && cp < 128; ++cp) table[cp] = r.cls;
  }
  return table;
}

constexpr std::array<UnicodeClass, 128> kAscii = make_ascii_table();

}  // namespace

UnicodeClass unicode_class(uint32_t cp) {
  if (cp < 128) return kAscii[cp];
  // The last range whose first code point is <= cp.
  const auto* it = std::upper_bound(std::begin(kRanges), std::end(kRanges), cp,
                                    [](uint32_t value, const ClassRange& r) { return value < r.first; });
  if (it == std::begin(kRanges)) return kOther;
  --it;
  return cp <= it->last ? it->cls : kOther;
}

}  // namespace kiln
