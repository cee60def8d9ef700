// kiln perplexity -m MODEL -f TEXT -c N: llama.cpp-style perplexity over chunks of the text.
#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <fstream>
#include <iterator>

#include "engine/error.h"
#include "engine/nonfinite_check.h"
#include "engine/perplexity.h"
#include "main/cli.h"
#include "main/commands.h"
#include "main/model_options.h"
#include "main/sigint_scope.h"

namespace kiln {
namespace {

std::atomic<bool> g_interrupted{false};
void on_perplexity_sigint(int) { g_interrupted.store(true); }

// Ends the run at a chunk boundary after Ctrl-C.
struct Interrupted {
  int64_t n_chunks;
};

}  // namespace

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
  // A NaN score comes from NaN or infinite logits (finite ones give at worst an infinite perplexity): name
  // where they began.
  const auto on_chunk = [&](int64_t chunk, double ppl) {
    if (std::isnan(ppl)) {
      std::vector<int32_t> chunk_tokens(tokens.begin() + chunk * n_ctx, tokens.begin() + (chunk + 1) * n_ctx);
      if (bos >= 0) chunk_tokens[0] = bos;
      fmt::print("\n");
      fail_nonfinite(model.file,
                     NonFiniteLogits(fmt::format("the perplexity of chunk {} is not a number", chunk + 1), chunk_tokens),
                     args["threads"].as<int>());
    }
    fmt::print("[{}]{:.4f},", chunk + 1, ppl);
    std::fflush(stdout);
    if (g_interrupted.load()) throw Interrupted{chunk + 1};
  };
  PerplexityResult r;
  try {
    // Ctrl-C stops after the chunk in flight, whose running estimate is the last one printed; a second
    // Ctrl-C ends at once.
    g_interrupted.store(false);
    const SigintScope sigint(on_perplexity_sigint, SA_RESETHAND | SA_RESTART);
    r = perplexity(*model.backend, tokens, n_ctx, bos, args["chunks"].as<int64_t>(), on_chunk);
  } catch (const Interrupted& stop) {
    fmt::print("\n");
    fmt::print(stderr, "[interrupted after {} chunks: the last value printed is the estimate so far]\n",
               stop.n_chunks);
    return 130;
  }
  fmt::print("\nFinal estimate: PPL = {:.4f} +/- {:.5f} ({} chunks, {} tokens scored)\n", r.perplexity, r.error,
             r.n_chunks, r.n_scored);
  return 0;
}

}  // namespace kiln
