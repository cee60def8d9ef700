// Helpers every subcommand shares: option parsing with cxxopts and its --help.
#pragma once

// Vector options take each value as given ("--stop 'a, b'" is one stop string); comma lists are split
// where a command wants them (split_list). Every file includes cxxopts through this header.
#define CXXOPTS_VECTOR_DELIMITER '\0'
#include <cxxopts.hpp>
#include <string>
#include <vector>

namespace kiln {

// Parses argv; on --help prints the help and returns false (the command then exits 0).
bool parse_or_help(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& result);

// "128,256" -> {"128", "256"}, for llama-bench-style list flags given once or repeated.
std::vector<std::string> split_list(const std::vector<std::string>& values);

// Human-readable byte counts: "98.4 MB".
std::string format_bytes(uint64_t bytes);

}  // namespace kiln
