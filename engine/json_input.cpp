#include "engine/json_input.h"

#include <cmath>
#include <limits>

#include "engine/error.h"

namespace kiln {
namespace {

// The deepest nesting of arrays and objects, brackets inside strings skipped; stops counting past limit.
int nesting_depth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) break;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

}  // namespace

nlohmann::json parse_json_input(std::string_view text, const std::string& what) {
  KILN_CHECK(nesting_depth(text, kMaxJsonDepth) <= kMaxJsonDepth,
             "{} nests arrays or objects deeper than {} levels: it is damaged or not what it claims to be", what,
             kMaxJsonDepth);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{} is not valid JSON: {}", what, e.what());
  }
}

int64_t json_integer(const nlohmann::json& value, int64_t lo, int64_t hi, std::string_view what) {
  KILN_CHECK(value.is_number_integer(), "{} must be an integer, not {}", what,
             value.is_number() ? value.dump() : std::string(value.type_name()));
  const bool fits = value.is_number_unsigned() ? hi >= 0 && value.get<uint64_t>() <= uint64_t(hi)
                                               : value.get<int64_t>() >= lo && value.get<int64_t>() <= hi;
  KILN_CHECK(fits, "{} = {} is outside [{}, {}]", what, value.dump(), lo, hi);
  return value.get<int64_t>();
}

float json_float(const nlohmann::json& value, std::string_view what) {
  KILN_CHECK(value.is_number(), "{} must be a number, not {}", what, value.type_name());
  const double d = value.get<double>();
  KILN_CHECK(std::isfinite(d) && std::fabs(d) <= double(std::numeric_limits<float>::max()),
             "{} = {} is not a finite 32-bit float", what, value.dump());
  return float(d);
}

}  // namespace kiln
