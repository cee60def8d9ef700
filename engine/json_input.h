// JSON from a file kiln did not write (or that may be damaged): parsed with a bound on nesting, because
// copying, comparing or printing a parsed value recurses once per level and a hostile file could nest a
// million levels in a few megabytes.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace kiln {

inline constexpr int kMaxJsonDepth = 64;  // real configs, tokenizers and metadata nest under 10 levels

// Throws kiln::Error "<what> is not valid JSON: ..." or "<what> nests deeper than 64 levels".
[[nodiscard]] nlohmann::json parse_json_input(std::string_view text, const std::string& what);

// Numbers read as C++ types with their range checked first: converting a JSON float of 1e300 to an
// integer or to float is undefined behaviour, and 2^40 layers is no model.
// An integer in [lo, hi]; throws naming `what` for a float, another type or a value outside.
[[nodiscard]] int64_t json_integer(const nlohmann::json& value, int64_t lo, int64_t hi, std::string_view what);
// A number (integer or float) that float can hold; throws naming `what` otherwise.
[[nodiscard]] float json_float(const nlohmann::json& value, std::string_view what);

}  // namespace kiln
