// tokenizer_from_hf: reads tokenizer.json (byte-level BPE) or tokenizer.model (SentencePiece) and
// tokenizer_config.json (specials, BOS policy, chat template) into TokenizerData.
#include <sentencepiece_processor.h>

#include <fstream>
#include <map>
#include <sstream>

#include "convert/from_hf.h"
#include "engine/error.h"

namespace kiln {
namespace {

constexpr uint64_t kMaxTokenizerFileBytes = uint64_t(512) << 20;

std::string read_file(const std::filesystem::path& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  KILN_CHECK(!ec && size <= kMaxTokenizerFileBytes, "cannot read '{}' (missing or larger than {} bytes)",
             path.string(), kMaxTokenizerFileBytes);
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  KILN_CHECK(in.good() || in.eof(), "cannot read '{}'", path.string());
  return text.str();
}

nlohmann::json read_json(const std::filesystem::path& path) {
  try {
    return nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail("'{}' is not valid JSON: {}", path.string(), e.what());
  }
}

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
  fail("tokenizer.json: the pre-tokenizer split pattern is not one kiln knows: {}", pattern);
}

// A special token named in tokenizer_config.json: a string or {"content": ...}.
std::string special_text(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  return it->value("content", "");
}

void read_bpe(const nlohmann::json& tok, TokenizerData& d) {
  const auto& model = tok.at("model");
  KILN_CHECK(model.value("type", "") == "BPE", "tokenizer.json: model type '{}' is not supported (BPE is)",
             model.value("type", ""));
  d.kind = TokenizerKind::BytePairGpt2;
  std::map<int64_t, std::string> by_id;
  for (const auto& [piece, id] : model.at("vocab").items()) by_id[id.get<int64_t>()] = piece;
  for (const auto& added : tok.value("added_tokens", nlohmann::json::array()))
    by_id[added.at("id").get<int64_t>()] = added.at("content").get<std::string>();
  KILN_CHECK(!by_id.empty() && by_id.begin()->first == 0 && by_id.rbegin()->first == int64_t(by_id.size()) - 1,
             "tokenizer.json: token ids are not 0..{} without gaps", by_id.size() - 1);
  for (auto& [id, piece] : by_id) d.tokens.push_back(std::move(piece));
  d.token_types.assign(d.tokens.size(), int32_t(TokenType::Normal));
  for (const auto& added : tok.value("added_tokens", nlohmann::json::array()))
    d.token_types[size_t(added.at("id").get<int64_t>())] =
        int32_t(added.value("special", false) ? TokenType::Control : TokenType::UserDefined);
  for (const auto& merge : model.at("merges")) {
    if (merge.is_string()) {
      d.merges.push_back(merge.get<std::string>());
    } else {  // newer files: ["a", "b"]
      d.merges.push_back(merge.at(0).get<std::string>() + " " + merge.at(1).get<std::string>());
    }
  }
  d.pre_tokenizer = pre_tokenizer_name(tok.value("pre_tokenizer", nlohmann::json()));
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
    if (folder.tokenizer_model()) {
      read_sentencepiece(*folder.tokenizer_model(), d);
    } else {
      KILN_CHECK(folder.tokenizer_json().has_value(), "'{}' has neither tokenizer.json nor tokenizer.model",
                 folder.dir().string());
      read_bpe(read_json(*folder.tokenizer_json()), d);
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
