// kiln: a local LLM runner. `kiln --help` lists the subcommands; each has its own --help.
#include <fmt/format.h>

#include <cstring>
#include <string>

#include "engine/error.h"
#include "main/build_commit.h"
#include "main/cli.h"
#include "main/commands.h"

namespace {

void print_usage() {
  fmt::print("kiln {}: run large language models locally\n\nusage: kiln <command> [options]\n\ncommands:\n",
             KILN_VERSION);
  for (const auto& c : kiln::kCommands) fmt::print("  {:<12} {}\n", c.name, c.summary);
  fmt::print("\n`kiln <command> --help` describes a command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  if (std::strcmp(argv[1], "--version") == 0) {
    fmt::print("kiln {} (git {})\ncompiler: {}\nbackends: {}\n", KILN_VERSION, kiln::build_commit(), KILN_COMPILER,
               KILN_BACKENDS);
    return 0;
  }
  for (const auto& command : kiln::kCommands) {
    if (command.name != argv[1]) continue;
    std::string program = "kiln " + std::string(command.name);
    argv[1] = program.data();
    try {
      return command.run(argc - 1, argv + 1);
    } catch (const kiln::Error& e) {
      fmt::print(stderr, "kiln {}: error: {}\n", command.name, e.what());
      return 1;
    } catch (const cxxopts::exceptions::exception& e) {
      fmt::print(stderr, "kiln {}: {}\nsee `kiln {} --help`\n", command.name, e.what(), command.name);
      return 2;
    } catch (const std::bad_alloc&) {
      fmt::print(stderr, "kiln {}: error: out of memory\n", command.name);
      return 1;
    }
  }
  fmt::print(stderr, "kiln: unknown command '{}'\n\n", argv[1]);
  print_usage();
  return 2;
}
