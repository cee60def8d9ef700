// kiln embed -m MODEL -f TEXTS: one sentence embedding per line of TEXTS, as JSON lines on stdout
// ({"index": i, "embedding": [...]}), pooled and normalized as the model's config says.
#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <iostream>

#include "engine/error.h"
#include "main/cli.h"
#include "main/commands.h"
#include "main/model_options.h"

namespace kiln {
namespace {

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream file;
  if (path != "-") {
    file.open(path, std::ios::binary);
    KILN_CHECK(file.good(), "cannot read the texts file '{}'", path);
  }
  std::istream& in = path == "-" ? std::cin : file;
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  return lines;
}

// hidden: [n_tokens, dim] -> out: [dim]. Every token counts: an input is never padded.
void pool(const float* hidden, int64_t n_tokens, int64_t dim, Pooling pooling, float* out) {
  for (int64_t i = 0; i < dim; ++i) {
    double acc = pooling == Pooling::Max ? -INFINITY : 0.0;
    for (int64_t t = 0; t < (pooling == Pooling::Cls ? 1 : n_tokens); ++t) {
      const double v = hidden[t * dim + i];
      acc = pooling == Pooling::Max ? std::max(acc, v) : acc + v;
    }
    out[i] = float(pooling == Pooling::Mean ? acc / double(n_tokens) : acc);
  }
}

// out: [dim] scaled to unit length (a zero vector stays zero).
void normalize(float* out, int64_t dim) {
  double sum = 0;
  for (int64_t i = 0; i < dim; ++i) sum += double(out[i]) * out[i];
  const double scale = 1.0 / std::max(std::sqrt(sum), 1e-12);
  for (int64_t i = 0; i < dim; ++i) out[i] = float(out[i] * scale);
}

}  // namespace

int cmd_embed(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Embed each line of a text file with an encoder model (BERT): one JSON line per "
                                    "input, {\"index\": i, \"embedding\": [...]}, on stdout.");
  add_model_options(options);
  options.add_options()("f,file", "the texts, one per line ('-': standard input)", cxxopts::value<std::string>());
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  KILN_CHECK(args.count("file"), "give the texts: kiln embed -m MODEL -f TEXTS (one text per line)");

  const std::vector<std::string> texts = read_lines(args["file"].as<std::string>());
  LoadedModel model = load_model(args);
  Backend& backend = *model.backend;
  const ModelConfig& c = backend.config();
  KILN_CHECK(!c.lm_head && c.pooling != Pooling::None,
             "'{}' is a {} language model, not an embedding model: kiln embed needs an encoder such as BERT",
             args["model"].as<std::string>(), c.architecture);
  const int64_t max_tokens =
      c.pooling_max_tokens > 0 ? std::min(c.pooling_max_tokens, backend.n_ctx()) : backend.n_ctx();
  KILN_CHECK(max_tokens >= 2, "the context of {} tokens cannot hold a text", max_tokens);
  const Tokenizer& tokenizer = *model.tokenizer;

  std::vector<float> hidden, embedding(size_t(c.dim));
  for (size_t i = 0; i < texts.size(); ++i) {
    // [CLS] text [SEP], as the encoder was trained: the tokenizer adds the first, the end marker is its EOS.
    std::vector<int32_t> ids = tokenizer.encode(texts[i], true);
    const bool end_marker = tokenizer.eos_id() >= 0;
    // A long text keeps its beginning, as the reference truncates it, and still ends with the marker.
    if (int64_t(ids.size()) + end_marker > max_tokens) ids.resize(size_t(max_tokens - end_marker));
    if (end_marker) ids.push_back(tokenizer.eos_id());
    const auto n = int64_t(ids.size());
    hidden.resize(size_t(n * c.dim));
    backend.reset();
    backend.forward(ids.data(), n, 0, hidden.data(), true);
    pool(hidden.data(), n, c.dim, c.pooling, embedding.data());
    if (c.pooling_normalize) normalize(embedding.data(), c.dim);
    fmt::print("{{\"index\": {}, \"embedding\": [{}]}}\n", i, fmt::join(embedding, ", "));
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace kiln
