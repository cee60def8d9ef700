#include "tests/tokenizer/tok_fixtures.h"

#include <fmt/format.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace kiln::test {

std::string data_path(const std::string& name) { return std::string(KILN_SOURCE_DIR) + "/tests/data/" + name; }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json read_json(const std::string& name) { return nlohmann::json::parse(read_file(data_path(name))); }

std::vector<int32_t> read_ids(const std::string& name) {
  std::istringstream in(read_file(data_path(name)));
  std::vector<int32_t> ids;
  int32_t id;
  while (in >> id) ids.push_back(id);
  return ids;
}

namespace {

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

}  // namespace

std::vector<CorpusText> corpus() {
  std::vector<CorpusText> out;
  for (const auto& entry : read_json("tok_corpus.json")) {
    CorpusText c;
    c.name = entry.at("name").get<std::string>();
    if (entry.contains("hex")) {
      c.bytes = from_hex(entry.at("hex").get<std::string>());
      c.text = entry.at("replaced").get<std::string>();
    } else {
      c.bytes = c.text = entry.at("text").get<std::string>();
    }
    out.push_back(std::move(c));
  }
  return out;
}

std::string random_text() { return read_file(data_path("tok_random_unicode.txt")); }

TokenizerData smollm2_data() {
  const nlohmann::json j = read_json("tok_smollm2_vocab.json");
  TokenizerData d;
  d.kind = TokenizerKind::BytePairGpt2;
  d.pre_tokenizer = j.at("pre_tokenizer").get<std::string>();
  d.tokens = j.at("tokens").get<std::vector<std::string>>();
  d.merges = j.at("merges").get<std::vector<std::string>>();
  d.token_types.assign(d.tokens.size(), static_cast<int32_t>(TokenType::Normal));
  for (const auto& [id, type] : j.at("token_types").items()) d.token_types.at(std::stoul(id)) = type.get<int32_t>();
  d.bos_id = j.at("bos_id");
  d.eos_id = j.at("eos_id");
  d.unk_id = j.at("unk_id");
  d.pad_id = j.at("pad_id");
  d.add_bos = j.at("add_bos");
  d.chat_template = j.at("chat_template");
  return d;
}

TokenizerData spm_data(bool vocabulary_only) {
  const nlohmann::json j = read_json("tok_spm_expected.json");
  TokenizerData d;
  d.kind = TokenizerKind::SentencePiece;
  d.bos_id = j.at("bos_id");
  d.eos_id = j.at("eos_id");
  d.unk_id = j.at("unk_id");
  d.add_bos = true;
  d.add_space_prefix = true;
  for (const auto& p : j.at("pieces")) {
    d.tokens.push_back(p.at("piece").get<std::string>());
    d.scores.push_back(p.at("score").get<float>());
    d.token_types.push_back(p.at("type").get<int32_t>());
  }
  if (!vocabulary_only) d.spm_model = read_file(data_path("tok_spm_bpe.model"));
  return d;
}

std::string fnv1a64_hex(const std::string& bytes) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char b : bytes) h = (h ^ b) * 0x100000001B3ull;
  return fmt::format("{:016x}", h);
}

std::string fnv1a64_hex(const std::vector<int32_t>& values) {
  std::string bytes;
  for (int32_t v : values) {
    const auto u = static_cast<uint32_t>(v);
    for (int i = 0; i < 4; ++i) bytes += static_cast<char>((u >> (8 * i)) & 0xFF);
  }
  return fnv1a64_hex(bytes);
}

}  // namespace kiln::test
