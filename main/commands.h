// The subcommand table: each subcommand lives in its own main/cmd_<name>.cpp.
#pragma once

#include <span>
#include <string_view>

namespace kiln {

// argv[0] is "kiln <name>"; returns the process exit code. Errors are thrown as kiln::Error.
using CommandFn = int (*)(int argc, char** argv);

struct Command {
  std::string_view name;
  std::string_view summary;
  CommandFn run;
};

int cmd_convert(int argc, char** argv);
int cmd_info(int argc, char** argv);
int cmd_verify(int argc, char** argv);
int cmd_generate(int argc, char** argv);

inline constexpr Command kCommands[] = {
    {"generate", "continue one prompt, streamed to stdout", cmd_generate},
    {"convert", "convert a GGUF file or Hugging Face folder to a .kiln file", cmd_convert},
    {"info", "print a .kiln file's architecture, hyper-parameters, tokenizer and tensors", cmd_info},
    {"verify", "check every tensor of a .kiln file against its checksum", cmd_verify},
};

}  // namespace kiln
