// kiln perplexity -m MODEL -f TEXT -c N: llama.cpp-style perplexity over chunks of the text.
#include <fmt/format.h>

#include <fstream>
#include <iterator>

#include "engine/error.h"
#include "engine/perplexity.h"
#include "main/cli.h"
#include "main/commands.h"
#include "main/model_options.h"

namespace kiln {

int cmd_perplexity(int argc, char** argv) {
  cxxopts::Options options(argv[0],
                           "Perplexity of a text, as llama.cpp computes it: chunks of -c tokens, the second half of "
                           "each scored.");
  add_model_options(options);
  options.add_options()("f,file", "the text file", cxxopts::value<std::string>())(
      "chunks", "score at most this many chunks (0: all)", cxxopts::value<int64_t>()->default_value("0"));
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  KILN_CHECK(args.count("file"), "give the text: -f FILE");
  const int64_t n_ctx = args["ctx-size"].as<int64_t>() > 0 ? args["ctx-size"].as<int64_t>() : 512;
  const std::string path = args["file"].as<std::string>();
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in.good(), "cannot read the text file '{}'", path);
  const std::string text{std::istreambuf_iterator<char>(in), {}};

  LoadedModel model = load_model(args);
  const std::vector<int32_t> tokens = model.tokenizer->encode(text, false, false);
  const int32_t bos = model.tokenizer->adds_bos() ? model.tokenizer->bos_id() : -1;
  fmt::print(stderr, "{} tokens, chunks of {}\n", tokens.size(), n_ctx);
  const PerplexityResult r = perplexity(*model.backend, tokens, n_ctx, bos, args["chunks"].as<int64_t>(),
                                        [](int64_t chunk, double ppl) {
                                          fmt::print("[{}]{:.4f},", chunk + 1, ppl);
                                          std::fflush(stdout);
                                        });
  fmt::print("\nFinal estimate: PPL = {:.4f} +/- {:.5f} ({} chunks, {} tokens scored)\n", r.perplexity, r.error,
             r.n_chunks, r.n_scored);
  return 0;
}

}  // namespace kiln
