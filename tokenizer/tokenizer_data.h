// What a .kiln file stores about its tokenizer: the converter fills it from GGUF or a Hugging Face
// folder, the loader reads it back from the metadata JSON ("tokenizer" object, docs/FORMAT.md), and
// make_tokenizer() builds the encoder from it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

enum class TokenizerKind { BytePairGpt2, SentencePiece, WordPiece };

// Token types as GGUF numbers them.
enum class TokenType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct TokenizerData {
  TokenizerKind kind = TokenizerKind::BytePairGpt2;
  std::string pre_tokenizer;           // split rule: "gpt2", "llama3", "smollm", "qwen2", ... ("" = default)
  std::vector<std::string> tokens;     // id -> piece (byte-level BPE pieces use the GPT-2 byte map)
  std::vector<int32_t> token_types;    // TokenType per id; empty = all Normal
  std::vector<float> scores;           // SentencePiece scores; empty for BPE
  std::vector<std::string> merges;     // BPE merges "a b", rank = index
  std::string spm_model;               // serialized SentencePiece ModelProto, when the source had one
  int32_t bos_id = -1, eos_id = -1, pad_id = -1, unk_id = -1;  // -1 = none
  std::vector<int32_t> eos_ids;        // every id that ends a turn (eos_id first)
  bool add_bos = false;                // prepend BOS when encoding a prompt
  bool add_space_prefix = false;       // SentencePiece: prepend a space to the text
  bool lowercase = false;              // WordPiece: lower-case the input first
  std::string chat_template;           // the model's Jinja chat template, verbatim
};

}  // namespace kiln
