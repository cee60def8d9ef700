// kiln verify FILE: recompute every tensor's checksum.
#include <fmt/format.h>

#include "engine/error.h"
#include "engine/kiln_file.h"
#include "main/cli.h"
#include "main/commands.h"

namespace kiln {

int cmd_verify(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Check the header and every tensor of a .kiln file against their checksums.");
  options.add_options()("file", "the .kiln file", cxxopts::value<std::string>());
  options.parse_positional({"file"});
  options.positional_help("FILE");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  KILN_CHECK(args.count("file"), "give the .kiln file: kiln verify FILE");

  const KilnFile file = KilnFile::open(args["file"].as<std::string>());  // checks the header checksum
  const std::vector<std::string> bad = file.verify();
  if (bad.empty()) {
    fmt::print("{}: ok ({} tensors)\n", file.path(), file.tensors().size());
    return 0;
  }
  for (const auto& name : bad) fmt::print(stderr, "{}: tensor '{}' does not match its checksum\n", file.path(), name);
  fmt::print(stderr, "{}: {} of {} tensors are damaged: convert the model again\n", file.path(), bad.size(),
             file.tensors().size());
  return 1;
}

}  // namespace kiln
