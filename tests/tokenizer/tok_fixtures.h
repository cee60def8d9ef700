// Reads the tokenizer fixtures under tests/data (written by gen_tok_fixtures.py and
// gen_chat_fixtures.py from the reference Python packages).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer_data.h"

namespace kiln::test {

std::string data_path(const std::string& name);  // tests/data/<name>
std::string read_file(const std::string& path);
nlohmann::json read_json(const std::string& name);
std::vector<int32_t> read_ids(const std::string& name);  // space-separated ids

struct CorpusText {
  std::string name;
  std::string bytes;    // what the tokenizer is given
  std::string text;     // what the reference saw: bytes with invalid UTF-8 replaced by U+FFFD
};
std::vector<CorpusText> corpus();
std::string random_text();  // the 100 KB of random Unicode

// The SmolLM2 tokenizer as the GGUF stores it, from tok_smollm2_vocab.json; pre_tokenizer may be
// overridden to run the same vocabulary behind another split.
TokenizerData smollm2_data();
// The small SentencePiece model: from its .model bytes, or (vocabulary_only) from its pieces,
// scores and types as a GGUF "llama" tokenizer stores them.
TokenizerData spm_data(bool vocabulary_only);

std::string fnv1a64_hex(const std::vector<int32_t>& values);  // over little-endian int32s
std::string fnv1a64_hex(const std::string& bytes);

}  // namespace kiln::test
