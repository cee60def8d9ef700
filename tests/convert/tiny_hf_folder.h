// Test helper: a Hugging Face folder made from a tiny model fixture (tests/data/tiny_<name>/: config.json
// and model.safetensors) plus a minimal tokenizer, for tests that convert it.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kiln::testing {

// A byte-level BPE tokenizer.json with the 256 byte tokens and no merges: enough for a model whose
// test drives it by token ids (every tiny decoder has at least 256 embeddings). n_tokens > 256 adds
// plain filler tokens so that every embedding row has a token.
inline void write_byte_tokenizer(const std::filesystem::path& dir, int n_tokens = 256) {
  nlohmann::json vocab = nlohmann::json::object();
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    const int code = printable ? b : next++;
    std::string piece;
    if (code < 0x80) {
      piece = char(code);
    } else {
      piece = {char(0xC0 | (code >> 6)), char(0x80 | (code & 0x3F))};
    }
    vocab[piece] = b;
  }
  for (int id = 256; id < n_tokens; ++id) vocab["<fill" + std::to_string(id) + ">"] = id;
  const nlohmann::json tokenizer = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
                                    {"added_tokens", nlohmann::json::array()},
                                    {"pre_tokenizer", {{"type", "ByteLevel"}}}};
  std::ofstream(dir / "tokenizer.json") << tokenizer.dump();
}

// The pieces of a small WordPiece vocabulary with n entries: the five BERT specials, the lower-case
// letters and digits with their "##" continuations, then filler pieces.
inline std::vector<std::string> wordpiece_pieces(int n) {
  std::vector<std::string> pieces = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?"};
  for (char c = 'a'; c <= 'z'; ++c) pieces.push_back(std::string(1, c));
  for (char c = '0'; c <= '9'; ++c) pieces.push_back(std::string(1, c));
  for (char c = 'a'; c <= 'z'; ++c) pieces.push_back("##" + std::string(1, c));
  for (const char* word : {"the", "quick", "brown", "fox", "hello", "world", "##ing", "##s", "##ed", "kiln"})
    pieces.push_back(word);
  for (int i = 0; int(pieces.size()) < n; ++i) pieces.push_back("[unused" + std::to_string(i) + "]");
  return pieces;
}

inline void write_vocab_txt(const std::filesystem::path& dir, int n) {
  std::ofstream out(dir / "vocab.txt");
  for (const std::string& piece : wordpiece_pieces(n)) out << piece << "\n";
}

// Copies the fixture's config.json and model.safetensors into dir/model (created) and returns it.
inline std::filesystem::path copy_tiny_model(const std::filesystem::path& dir, const std::string& name) {
  const std::filesystem::path source = std::filesystem::path(KILN_SOURCE_DIR) / "tests/data" / ("tiny_" + name);
  const std::filesystem::path folder = dir / "model";
  std::filesystem::create_directories(folder);
  for (const char* file : {"config.json", "model.safetensors"})
    std::filesystem::copy_file(source / file, folder / file, std::filesystem::copy_options::overwrite_existing);
  return folder;
}

}  // namespace kiln::testing
