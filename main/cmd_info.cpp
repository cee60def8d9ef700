// kiln info FILE: what a .kiln file holds, read from its header alone (the weights are not read).
#include <fmt/format.h>

#include <map>

#include "engine/error.h"
#include "engine/kiln_file.h"
#include "main/cli.h"
#include "main/commands.h"

namespace kiln {

int cmd_info(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Print a .kiln file's architecture, hyper-parameters, tokenizer and tensors.");
  options.add_options()("file", "the .kiln file", cxxopts::value<std::string>())(
      "tensors", "also list every tensor");
  options.parse_positional({"file"});
  options.positional_help("FILE");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  KILN_CHECK(args.count("file"), "give the .kiln file: kiln info FILE");

  const KilnFile file = KilnFile::open(args["file"].as<std::string>());
  const ModelConfig& c = file.config();
  const nlohmann::json& meta = file.metadata();
  fmt::print("file          {} ({}, format version {})\n", file.path(), format_bytes(file.file_bytes()),
             file.version());
  fmt::print("architecture  {}\n", c.architecture);
  if (auto it = meta.find("provenance"); it != meta.end()) fmt::print("provenance    {}\n", it->dump());
  fmt::print("layers {}, dim {}, heads {} (kv {}), head_dim {}, ffn {}, vocab {}, context {}\n", c.n_layers, c.dim,
             c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.n_vocab, c.n_ctx_train);
  fmt::print("norm {} (eps {}), mlp {}, position {}", to_string(c.norm), c.norm_eps, to_string(c.mlp),
             to_string(c.position));
  if (c.position == PositionKind::Rotary)
    fmt::print(" ({}, rotary_dim {}, theta {}, scale {})", to_string(c.rotary_style), c.rotary_dim, c.rope_theta,
               c.rope_scale);
  fmt::print("{}{}\n", c.tied_embeddings ? ", tied embeddings" : "",
             c.sliding_window ? fmt::format(", sliding window {}", c.sliding_window) : "");

  const TokenizerData tok = file.tokenizer_data();
  const char* kind = tok.kind == TokenizerKind::BytePairGpt2    ? "byte-level BPE"
                     : tok.kind == TokenizerKind::SentencePiece ? "SentencePiece"
                                                                : "WordPiece";
  fmt::print("tokenizer     {} ({} tokens, {} merges{}), bos {}, eos {}\n", kind, tok.tokens.size(), tok.merges.size(),
             tok.pre_tokenizer.empty() ? "" : fmt::format(", pre {}", tok.pre_tokenizer), tok.bos_id, tok.eos_id);
  fmt::print("chat template {}\n", tok.chat_template.empty() ? "none" : fmt::format("{} chars", tok.chat_template.size()));

  std::map<std::string, std::pair<int, uint64_t>> by_dtype;
  for (const auto& t : file.tensors()) {
    auto& [count, bytes] = by_dtype[std::string(dtype_name(t.dtype))];
    ++count;
    bytes += t.bytes + (t.scales ? t.numel() / t.group_size * 2 : 0);
  }
  fmt::print("tensors       {}\n", file.tensors().size());
  for (const auto& [dtype, stats] : by_dtype)
    fmt::print("  {:<6} {:>5} tensors  {}\n", dtype, stats.first, format_bytes(stats.second));
  if (args.count("tensors"))
    for (const auto& t : file.tensors())
      fmt::print("  {:<36} {:<5} {}{}\n", t.name, dtype_name(t.dtype), t.shape_string(),
                 t.group_size ? fmt::format(" group {}", t.group_size) : "");
  return 0;
}

}  // namespace kiln
