// Helpers every subcommand shares: option parsing with cxxopts and its --help.
#pragma once

#include <cxxopts.hpp>
#include <string>

namespace kiln {

// Parses argv; on --help prints the help and returns false (the command then exits 0).
bool parse_or_help(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& result);

// Human-readable byte counts: "98.4 MB".
std::string format_bytes(uint64_t bytes);

}  // namespace kiln
