// kiln tokenize -m FILE "text": the ids (and pieces) the model's tokenizer gives a text.
// kiln detokenize -m FILE IDS...: the text those ids stand for.
#include <fmt/format.h>

#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/kiln_file.h"
#include "main/cli.h"
#include "main/commands.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace kiln {

namespace {

// A token's bytes made printable on one line: escapes for control characters and bytes that are
// not UTF-8 on their own (a piece of a character).
std::string printable(std::string_view bytes) {
  std::string out;
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Char c = utf8_decode(bytes, pos);
    if (c.status != Utf8Status::Ok) {
      for (size_t k = 0; k < c.length; ++k) out += fmt::format("\\x{:02x}", static_cast<uint8_t>(bytes[pos + k]));
    } else if (c.code_point == '\n') {
      out += "\\n";
    } else if (c.code_point == '\t') {
      out += "\\t";
    } else if (c.code_point == '\r') {
      out += "\\r";
    } else if (c.code_point == '\\') {
      out += "\\\\";
    } else if (c.code_point < 0x20 || c.code_point == 0x7F) {
      out += fmt::format("\\x{:02x}", c.code_point);
    } else {
      out.append(bytes.substr(pos, c.length));
    }
    pos += c.length;
  }
  return out;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  const KilnFile file = KilnFile::open(path);
  return make_tokenizer(file.tokenizer_data());
}

}  // namespace

int cmd_tokenize(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Print the token ids (and pieces) of a text; with no text, read standard input.");
  options.add_options()("m,model", "the .kiln file", cxxopts::value<std::string>())(
      "ids", "print the ids only, space-separated")("no-bos", "never prepend BOS, even where the model adds one")(
      "no-special", "treat special-token text such as <|im_start|> as plain text")(
      "text", "the text", cxxopts::value<std::vector<std::string>>());
  options.parse_positional({"text"});
  options.positional_help("TEXT");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  KILN_CHECK(args.count("model"), "give the model: kiln tokenize -m FILE \"text\"");

  std::string text;
  if (args.count("text")) {
    const auto parts = args["text"].as<std::vector<std::string>>();
    for (size_t i = 0; i < parts.size(); ++i) text += (i ? " " : "") + parts[i];
  } else {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  const auto tokenizer = load_tokenizer(args["model"].as<std::string>());
  const std::vector<int32_t> ids = tokenizer->encode(text, !args.count("no-bos"), !args.count("no-special"));
  if (args.count("ids")) {
    fmt::print("{}\n", fmt::join(ids, " "));
    return 0;
  }
  for (int32_t id : ids) fmt::print("{:>7} -> '{}'\n", id, printable(tokenizer->token_bytes(id)));
  fmt::print("{} tokens\n", ids.size());
  return 0;
}

int cmd_detokenize(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Print the text that token ids stand for.");
  options.add_options()("m,model", "the .kiln file", cxxopts::value<std::string>())(
      "skip-special", "leave out special tokens such as BOS and EOS")(
      "ids", "the token ids", cxxopts::value<std::vector<std::string>>());
  options.parse_positional({"ids"});
  options.positional_help("IDS...");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  KILN_CHECK(args.count("model"), "give the model: kiln detokenize -m FILE IDS...");
  KILN_CHECK(args.count("ids"), "give the token ids: kiln detokenize -m FILE 1 2 3");

  std::vector<int32_t> ids;
  for (const std::string& word : args["ids"].as<std::vector<std::string>>()) {
    size_t used = 0;
    long long value = -1;
    try {
      value = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    KILN_CHECK(used == word.size() && value >= 0 && value <= INT32_MAX, "'{}' is not a token id", word);
    ids.push_back(static_cast<int32_t>(value));
  }
  const auto tokenizer = load_tokenizer(args["model"].as<std::string>());
  fmt::print("{}\n", tokenizer->decode(ids, args.count("skip-special") > 0));
  return 0;
}

}  // namespace kiln
