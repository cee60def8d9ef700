// Errors: every failure on user input is a kiln::Error with a message that says what was wrong and
// what to do. Checks stay on in release builds (never assert on input).
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace kiln {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace kiln

// KILN_CHECK(cond, "format {}", args...): throws kiln::Error with the formatted message when cond is false.
#define KILN_CHECK(cond, ...)          \
  do {                                 \
    if (!(cond)) ::kiln::fail(__VA_ARGS__); \
  } while (0)
