#include "main/cli.h"

#include <fmt/format.h>

#include <string_view>

namespace kiln {

bool parse_or_help(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& result) {
  options.add_options()("h,help", "show this help");
  // Multi-letter short flags (llama.cpp's, vLLM's -tp): cxxopts would read "-sys" as "-s ys" (the seed).
  static char system_flag[] = "--system", gpu_layers_flag[] = "--ngl", tensor_parallel_flag[] = "--tensor-parallel";
  std::vector<char*> args(argv, argv + argc);
  for (auto& arg : args) {
    const std::string_view a(arg);
    if (a == "-sys") arg = system_flag;
    if (a == "-ngl") arg = gpu_layers_flag;
    if (a == "-tp") arg = tensor_parallel_flag;
  }
  result = options.parse(argc, args.data());
  if (result.count("help")) {
    fmt::print("{}\n", options.help());
    return false;
  }
  return true;
}

std::vector<std::string> split_list(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  for (const auto& value : values) {
    size_t start = 0;
    for (size_t comma; (comma = value.find(',', start)) != std::string::npos; start = comma + 1)
      out.push_back(value.substr(start, comma - start));
    out.push_back(value.substr(start));
  }
  return out;
}

std::string format_bytes(uint64_t bytes) {
  if (bytes < 1000) return fmt::format("{} B", bytes);
  const char* units[] = {"kB", "MB", "GB", "TB"};
  double value = double(bytes);
  int unit = -1;
  while (value >= 1000 && unit < 3) value /= 1000, ++unit;
  return fmt::format("{:.1f} {}", value, units[unit]);
}

}  // namespace kiln
