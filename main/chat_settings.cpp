#include "main/chat_settings.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "engine/error.h"

namespace kiln {
namespace {

constexpr uintmax_t kMaxMessageBytes = uintmax_t(1) << 20;

double number_of(const std::string& name, const std::string& value) {
  char* end = nullptr;
  const double number = std::strtod(value.c_str(), &end);
  KILN_CHECK(!value.empty() && *end == '\0' && std::isfinite(number), "/set {}: '{}' is not a number", name, value);
  return number;
}

int64_t whole_number_of(const std::string& name, const std::string& value, double lowest) {
  const double number = number_of(name, value);
  KILN_CHECK(number == std::floor(number) && number >= lowest && number <= 9.0e15,
             "/set {}: '{}' is not a whole number from {}", name, value, lowest);
  return int64_t(number);
}

}  // namespace

std::string describe(const ReplySettings& s) {
  const SamplerParams& p = s.sampling;
  return fmt::format("temp {}, top-k {}, top-p {}, min-p {}, repeat-penalty {}, seed {}, n {}", p.temperature, p.top_k,
                     p.top_p, p.min_p, p.repeat_penalty, p.seed, s.max_tokens);
}

ReplySettings with_setting(const ReplySettings& settings, const std::string& name, const std::string& value) {
  ReplySettings s = settings;
  SamplerParams& p = s.sampling;
  if (name == "temp") {
    p.temperature = float(number_of(name, value));
  } else if (name == "top-k") {
    p.top_k = int(whole_number_of(name, value, 0));
  } else if (name == "top-p") {
    p.top_p = float(number_of(name, value));
  } else if (name == "min-p") {
    p.min_p = float(number_of(name, value));
  } else if (name == "repeat-penalty") {
    p.repeat_penalty = float(number_of(name, value));
  } else if (name == "seed") {
    p.seed = uint64_t(whole_number_of(name, value, 0));
  } else if (name == "n") {
    s.max_tokens = whole_number_of(name, value, -1);
  } else {
    fail("/set: unknown setting '{}': temp, top-k, top-p, min-p, repeat-penalty, seed or n", name);
  }
  p.validate();
  return s;
}

std::string read_message_file(const std::string& path) {
  std::error_code error;
  KILN_CHECK(std::filesystem::is_regular_file(path, error), "/read: '{}' is not a file", path);
  const uintmax_t bytes = std::filesystem::file_size(path, error);
  KILN_CHECK(!error && bytes <= kMaxMessageBytes, "/read: '{}' is larger than a message may be (1 MiB)", path);
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  KILN_CHECK(!in.bad(), "/read: cannot read '{}'", path);
  text.erase(text.find_last_not_of(" \t\r\n") + 1);
  KILN_CHECK(!text.empty(), "/read: '{}' is empty", path);
  return text;
}

}  // namespace kiln
