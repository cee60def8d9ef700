// tokenizer_from_hf: reads tokenizer.json (byte-level BPE) or tokenizer.model (SentencePiece) and
// tokenizer_config.json (specials, BOS policy, chat template) into TokenizerData.
#include <sentencepiece_processor.h>

#include <limits>
#include <map>
#include <optional>
#include <sstream>

#include "convert/from_hf.h"
#include "engine/error.h"
#include "engine/json_input.h"

namespace kiln {
namespace {

constexpr uint64_t kMaxTokenizerFileBytes = uint64_t(512) << 20;

std::string read_file(const std::filesystem::path& path) { return read_bounded_file(path, kMaxTokenizerFileBytes); }

nlohmann::json read_json(const std::filesystem::path& path) { return read_bounded_json(path, kMaxTokenizerFileBytes); }

// The regex split rules kiln knows, by the names GGUF files use for them (tokenizer.ggml.pre).
std::string pre_tokenizer_name(const nlohmann::json& pre) {
  if (pre.is_null()) return "default";
  const std::string type = pre.value("type", "");
  if (type == "ByteLevel") return "gpt2";
  if (type != "Sequence") fail("tokenizer.json: pre-tokenizer '{}' is not supported", type);
  const auto& steps = pre.at("pretokenizers");
  bool digits = false;
  std::string pattern;
  for (const auto& step : steps) {
    const std::string t = step.value("type", "");
    if (t == "Digits") digits = step.value("individual_digits", false);
    if (t == "Split" && step.contains("pattern")) pattern = step["pattern"].value("Regex", "");
  }
  if (pattern.empty()) return digits ? "smollm" : "gpt2";
  if (pattern.find("\\p{N}{1,3}") != std::string::npos) return "llama-bpe";
  if (pattern.find("\\p{N}|") != std::string::npos) return "qwen2";
  if (pattern == " ?[^(\\s|[.,!?…。，、।۔،])]+") return "bloom";
  fail("tokenizer.json: the pre-tokenizer split pattern is not one kiln knows: {}", pattern);
}

// A special token named in tokenizer_config.json: a string or {"content": ...}.
std::string special_text(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  return it->value("content", "");
}

// A token id as tokenizer.json writes it: a non-negative integer an int32_t holds.
int64_t token_id(const nlohmann::json& id) {
  return json_integer(id, 0, std::numeric_limits<int32_t>::max() - 1, "tokenizer.json: a token id");
}

// The model's vocabulary and the added tokens, by id, which must run 0..n-1; added tokens that are
// special are control tokens, the others user-defined.
void read_tokens(const nlohmann::json& tok, const nlohmann::json& model, TokenizerData& d) {
  std::map<int64_t, std::string> by_id;
  for (const auto& [piece, id] : model.at("vocab").items()) by_id[token_id(id)] = piece;
  const nlohmann::json added_tokens = tok.value("added_tokens", nlohmann::json::array());
  for (const auto& added : added_tokens) by_id[token_id(added.at("id"))] = added.at("content").get<std::string>();
  KILN_CHECK(!by_id.empty() && by_id.begin()->first == 0 && by_id.rbegin()->first == int64_t(by_id.size()) - 1,
             "tokenizer.json: the {} token ids are not 0, 1, 2, ... without gaps", by_id.size());
  for (auto& [id, piece] : by_id) d.tokens.push_back(std::move(piece));
  d.token_types.assign(d.tokens.size(), int32_t(TokenType::Normal));
  for (const auto& added : added_tokens) {
    const auto id = size_t(token_id(added.at("id")));
    d.token_types[id] = int32_t(added.value("special", false) ? TokenType::Control : TokenType::UserDefined);
  }
}

void read_bpe(const nlohmann::json& tok, TokenizerData& d) {
  const auto& model = tok.at("model");
  KILN_CHECK(model.value("type", "") == "BPE", "tokenizer.json: model type '{}' is not supported (BPE is)",
             model.value("type", ""));
  d.kind = TokenizerKind::BytePairGpt2;
  read_tokens(tok, model, d);
  for (const auto& merge : model.at("merges")) {
    if (merge.is_string()) {
      d.merges.push_back(merge.get<std::string>());
    } else {  // newer files: ["a", "b"]
      d.merges.push_back(merge.at(0).get<std::string>() + " " + merge.at(1).get<std::string>());
    }
  }
  d.pre_tokenizer = pre_tokenizer_name(tok.value("pre_tokenizer", nlohmann::json()));
}

// The WordPiece text rules kiln knows, as a pre_tokenizer name: the BERT normalizer (clean-up, CJK
// characters apart, optional lower-casing and accent stripping) and split. Accents are stripped when
// lower-casing unless the source says otherwise; the two exceptions have their own names.
std::string bert_rule_name(bool lowercase, bool strip_accents) {
  if (strip_accents == lowercase) return "bert";
  return strip_accents ? "bert-strip-accents" : "bert-keep-accents";
}

int32_t id_of_piece(const TokenizerData& d, const std::string& piece) {
  for (size_t i = 0; i < d.tokens.size(); ++i)
    if (d.tokens[i] == piece) return int32_t(i);
  return -1;
}

void read_wordpiece(const nlohmann::json& tok, TokenizerData& d) {
  const auto& model = tok.at("model");
  d.kind = TokenizerKind::WordPiece;
  const auto limit = model.find("max_input_chars_per_word");
  KILN_CHECK(model.value("continuing_subword_prefix", "##") == "##" &&
                 (limit == model.end() || json_integer(*limit, 0, 1 << 30, "max_input_chars_per_word") == 100),
             "tokenizer.json: WordPiece with a continuation prefix other than '##' or a word limit other than 100 "
             "characters is not supported");
  read_tokens(tok, model, d);
  d.unk_id = id_of_piece(d, model.value("unk_token", "[UNK]"));

  const auto& norm = tok.value("normalizer", nlohmann::json());
  KILN_CHECK(norm.is_object() && norm.value("type", "") == "BertNormalizer",
             "tokenizer.json: a WordPiece normalizer other than BertNormalizer is not supported");
  KILN_CHECK(norm.value("clean_text", true) && norm.value("handle_chinese_chars", true),
             "tokenizer.json: BertNormalizer without clean_text or handle_chinese_chars is not supported");
  d.lowercase = norm.value("lowercase", true);
  const auto strip = norm.find("strip_accents");
  const bool strip_accents = strip == norm.end() || strip->is_null() ? d.lowercase : strip->get<bool>();
  d.pre_tokenizer = bert_rule_name(d.lowercase, strip_accents);
  KILN_CHECK(tok.value("pre_tokenizer", nlohmann::json()).value("type", "") == "BertPreTokenizer",
             "tokenizer.json: a WordPiece pre-tokenizer other than BertPreTokenizer is not supported");

  // [CLS] text [SEP]: the template's first and last special tokens frame every text.
  const auto& post = tok.value("post_processor", nlohmann::json());
  if (post.is_object() && post.value("type", "") == "TemplateProcessing") {
    const auto& single = post.at("single");
    KILN_CHECK(single.size() == 3 && single[0].contains("SpecialToken") && single[2].contains("SpecialToken"),
               "tokenizer.json: a WordPiece template other than [CLS] $A [SEP] is not supported");
    d.bos_id = id_of_piece(d, single[0]["SpecialToken"].at("id").get<std::string>());
    d.eos_id = id_of_piece(d, single[2]["SpecialToken"].at("id").get<std::string>());
  } else if (post.is_object() && post.value("type", "") == "BertProcessing") {
    d.bos_id = id_of_piece(d, post.at("cls").at(0).get<std::string>());
    d.eos_id = id_of_piece(d, post.at("sep").at(0).get<std::string>());
  }
  d.add_bos = d.bos_id >= 0;
}

// vocab.txt (one piece per line, the line number is the id) with BertTokenizer's settings from
// tokenizer_config.json.
void read_vocab_txt(const std::filesystem::path& path, const std::optional<std::filesystem::path>& config_path,
                    TokenizerData& d) {
  d.kind = TokenizerKind::WordPiece;
  std::istringstream lines(read_file(path));
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    d.tokens.push_back(line);
  }
  KILN_CHECK(!d.tokens.empty(), "'{}' holds no tokens", path.string());
  const nlohmann::json config = config_path ? read_json(*config_path) : nlohmann::json::object();
  KILN_CHECK(config.value("tokenize_chinese_chars", true) && config.value("do_basic_tokenize", true),
             "'{}': BertTokenizer without tokenize_chinese_chars or do_basic_tokenize is not supported",
             path.string());
  d.lowercase = config.value("do_lower_case", true);
  const auto strip = config.find("strip_accents");
  const bool strip_accents = strip == config.end() || strip->is_null() ? d.lowercase : strip->get<bool>();
  d.pre_tokenizer = bert_rule_name(d.lowercase, strip_accents);
  d.token_types.assign(d.tokens.size(), int32_t(TokenType::Normal));
  auto special = [&](const char* key, const char* fallback) {
    std::string text = special_text(config, key);
    const int32_t id = id_of_piece(d, text.empty() ? fallback : text);
    if (id >= 0) d.token_types[size_t(id)] = int32_t(TokenType::Control);
    return id;
  };
  d.unk_id = special("unk_token", "[UNK]");
  d.bos_id = special("cls_token", "[CLS]");
  d.eos_id = special("sep_token", "[SEP]");
  d.pad_id = special("pad_token", "[PAD]");
  special("mask_token", "[MASK]");
  d.add_bos = d.bos_id >= 0;
}

void read_sentencepiece(const std::filesystem::path& path, TokenizerData& d) {
  d.kind = TokenizerKind::SentencePiece;
  d.spm_model = read_file(path);
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.LoadFromSerializedProto(d.spm_model);
  KILN_CHECK(status.ok(), "'{}' is not a SentencePiece model: {}", path.string(), status.ToString());
  for (int id = 0; id < sp.GetPieceSize(); ++id) {
    d.tokens.push_back(sp.IdToPiece(id));
    d.scores.push_back(sp.GetScore(id));
    TokenType type = TokenType::Normal;
    if (sp.IsUnknown(id)) type = TokenType::Unknown;
    if (sp.IsControl(id)) type = TokenType::Control;
    if (sp.IsUnused(id)) type = TokenType::Unused;
    if (sp.IsByte(id)) type = TokenType::Byte;
    d.token_types.push_back(int32_t(type));
  }
  d.bos_id = sp.bos_id();
  d.eos_id = sp.eos_id();
  d.unk_id = sp.unk_id();
  d.pad_id = sp.pad_id();
  d.add_bos = true;
  d.add_space_prefix = true;
}

}  // namespace

TokenizerData tokenizer_from_hf(const HfFolder& folder) {
  TokenizerData d;
  try {
    const std::filesystem::path vocab_txt = folder.dir() / "vocab.txt";
    if (folder.tokenizer_model()) {
      read_sentencepiece(*folder.tokenizer_model(), d);
    } else if (folder.tokenizer_json()) {
      const nlohmann::json tok = read_json(*folder.tokenizer_json());
      if (tok.at("model").value("type", "") == "WordPiece") {
        read_wordpiece(tok, d);
      } else {
        read_bpe(tok, d);
      }
    } else {
      KILN_CHECK(std::filesystem::is_regular_file(vocab_txt),
                 "'{}' has neither tokenizer.json nor tokenizer.model (nor a WordPiece vocab.txt)",
                 folder.dir().string());
      read_vocab_txt(vocab_txt, folder.tokenizer_config(), d);
    }
    if (folder.tokenizer_config()) {
      const nlohmann::json config = read_json(*folder.tokenizer_config());
      auto id_of = [&](const std::string& text) -> int32_t {
        for (size_t i = 0; i < d.tokens.size(); ++i)
          if (!text.empty() && d.tokens[i] == text) return int32_t(i);
        return -1;
      };
      if (int32_t id = id_of(special_text(config, "bos_token")); id >= 0) d.bos_id = id;
      if (int32_t id = id_of(special_text(config, "eos_token")); id >= 0) d.eos_id = id;
      if (int32_t id = id_of(special_text(config, "pad_token")); id >= 0) d.pad_id = id;
      if (int32_t id = id_of(special_text(config, "unk_token")); id >= 0) d.unk_id = id;
      if (auto it = config.find("add_bos_token"); it != config.end() && it->is_boolean()) d.add_bos = it->get<bool>();
      if (auto it = config.find("chat_template"); it != config.end()) {
        if (it->is_string()) {
          d.chat_template = it->get<std::string>();
        } else if (it->is_array()) {  // named templates: take the default one
          for (const auto& named : *it)
            if (named.value("name", "") == "default") d.chat_template = named.value("template", "");
        }
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail("'{}': unexpected tokenizer file content: {}", folder.dir().string(), e.what());
  }
  if (d.eos_id >= 0) d.eos_ids.push_back(d.eos_id);
  return d;
}

}  // namespace kiln
