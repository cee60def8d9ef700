#include "engine/tokenizer_metadata.h"

#include <nlohmann/json.hpp>

#include <limits>
#include <type_traits>

#include "engine/error.h"
#include "engine/json_input.h"

namespace kiln {
namespace {

constexpr std::pair<TokenizerKind, const char*> kKinds[] = {
    {TokenizerKind::BytePairGpt2, "bpe"}, {TokenizerKind::SentencePiece, "spm"}, {TokenizerKind::WordPiece, "wordpiece"}};

// Numbers go through json_integer / json_float, which refuse what their type cannot hold.
int32_t read_int(const nlohmann::json& value, const char* key) {
  return int32_t(json_integer(value, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max(),
                              fmt::format("tokenizer field '{}'", key)));
}

template <typename T>
void read(const nlohmann::json& json, const char* key, T& out) {
  auto it = json.find(key);
  if (it == json.end()) return;
  try {
    if constexpr (std::is_same_v<T, int32_t>) {
      out = read_int(*it, key);
    } else if constexpr (std::is_same_v<T, std::vector<int32_t>> || std::is_same_v<T, std::vector<float>>) {
      KILN_CHECK(it->is_array(), "tokenizer field '{}' must be an array, not {}: convert the model again", key,
                 it->type_name());
      out.clear();
      out.reserve(it->size());
      for (const nlohmann::json& element : *it) {
        if constexpr (std::is_same_v<T, std::vector<float>>) {
          out.push_back(json_float(element, fmt::format("an element of tokenizer field '{}'", key)));
        } else {
          out.push_back(read_int(element, key));
        }
      }
    } else {
      out = it->get<T>();
    }
  } catch (const nlohmann::json::exception&) {
    fail("tokenizer field '{}' has the wrong type ({}): convert the model again", key, it->type_name());
  }
}

}  // namespace

nlohmann::json tokenizer_to_json(const TokenizerData& d) {
  const char* kind = "bpe";
  for (const auto& [k, name] : kKinds)
    if (k == d.kind) kind = name;
  return {
      {"kind", kind},
      {"pre_tokenizer", d.pre_tokenizer},
      {"tokens", d.tokens},
      {"token_types", d.token_types},
      {"scores", d.scores},
      {"merges", d.merges},
      {"bos_id", d.bos_id},
      {"eos_id", d.eos_id},
      {"pad_id", d.pad_id},
      {"unk_id", d.unk_id},
      {"eos_ids", d.eos_ids},
      {"add_bos", d.add_bos},
      {"add_space_prefix", d.add_space_prefix},
      {"lowercase", d.lowercase},
      {"chat_template", d.chat_template},
  };
}

TokenizerData tokenizer_from_json(const nlohmann::json& json, int64_t n_vocab) {
  KILN_CHECK(json.is_object(), "the file has no tokenizer metadata: convert the model again");
  TokenizerData d;
  std::string kind = "bpe";
  read(json, "kind", kind);
  bool known = false;
  for (const auto& [k, name] : kKinds)
    if (kind == name) d.kind = k, known = true;
  KILN_CHECK(known, "tokenizer kind '{}' is not one of bpe, spm, wordpiece", kind);
  read(json, "pre_tokenizer", d.pre_tokenizer);
  read(json, "tokens", d.tokens);
  read(json, "token_types", d.token_types);
  read(json, "scores", d.scores);
  read(json, "merges", d.merges);
  read(json, "bos_id", d.bos_id);
  read(json, "eos_id", d.eos_id);
  read(json, "pad_id", d.pad_id);
  read(json, "unk_id", d.unk_id);
  read(json, "eos_ids", d.eos_ids);
  read(json, "add_bos", d.add_bos);
  read(json, "add_space_prefix", d.add_space_prefix);
  read(json, "lowercase", d.lowercase);
  read(json, "chat_template", d.chat_template);

  const auto n_tokens = int64_t(d.tokens.size());
  KILN_CHECK(n_tokens <= n_vocab, "the tokenizer has {} tokens but the model only {} embeddings", n_tokens, n_vocab);
  KILN_CHECK(d.token_types.empty() || int64_t(d.token_types.size()) == n_tokens,
             "tokenizer has {} token types for {} tokens", d.token_types.size(), n_tokens);
  KILN_CHECK(d.scores.empty() || int64_t(d.scores.size()) == n_tokens, "tokenizer has {} scores for {} tokens",
             d.scores.size(), n_tokens);
  auto check_id = [&](const char* what, int32_t id) {
    KILN_CHECK(id >= -1 && id < n_tokens, "tokenizer {} {} is not a token id (vocabulary {})", what, id, n_tokens);
  };
  check_id("bos_id", d.bos_id);
  check_id("eos_id", d.eos_id);
  check_id("pad_id", d.pad_id);
  check_id("unk_id", d.unk_id);
  for (int32_t id : d.eos_ids) check_id("eos_ids entry", id);
  return d;
}

}  // namespace kiln
