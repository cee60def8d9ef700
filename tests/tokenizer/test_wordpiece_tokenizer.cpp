// WordPiece against the reference `tokenizers` package (fixtures from gen_wordpiece_fixtures.py): the
// corpus, the WordPiece extras and 100 KB of random Unicode under all four BERT text rules.
#include <gtest/gtest.h>

#include <fstream>

#include "engine/error.h"
#include "tests/tokenizer/tok_fixtures.h"
#include "tokenizer/wordpiece_tokenizer.h"

namespace kiln {
namespace {

// The trained vocabulary as a converted vocab.txt describes it: the five BERT specials are control tokens.
TokenizerData wordpiece_data(bool lowercase, bool strip_accents) {
  TokenizerData d;
  d.kind = TokenizerKind::WordPiece;
  std::ifstream in(test::data_path("tok_wordpiece_vocab.txt"));
  for (std::string line; std::getline(in, line);) d.tokens.push_back(line);
  d.token_types.assign(d.tokens.size(), int32_t(TokenType::Normal));
  for (int32_t id = 0; id < 5; ++id) d.token_types[size_t(id)] = int32_t(TokenType::Control);
  d.unk_id = 1;
  d.bos_id = 2;  // [CLS]
  d.eos_id = 3;  // [SEP]
  d.pad_id = 0;
  d.add_bos = true;
  d.lowercase = lowercase;
  d.pre_tokenizer = strip_accents == lowercase ? "bert" : strip_accents ? "bert-strip-accents" : "bert-keep-accents";
  return d;
}

// [CLS] text [SEP], as the reference's template frames a text.
std::vector<int32_t> framed(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids = tok.encode(text, true);
  ids.push_back(tok.eos_id());
  return ids;
}

TEST(WordPiece, MatchesReferenceOnCorpusUnderEveryRule) {
  const nlohmann::json expected = test::read_json("tok_wordpiece_expected.json");
  std::vector<std::pair<std::string, std::string>> texts;
  for (const auto& c : test::corpus()) texts.emplace_back(c.name, c.bytes);
  for (const auto& [name, text] : expected.at("extras").items()) texts.emplace_back(name, text.get<std::string>());
  ASSERT_GT(texts.size(), 20u);
  for (const auto& rule : expected.at("rules")) {
    const bool lowercase = rule.at("lowercase"), strip = rule.at("strip_accents");
    const auto tok = make_tokenizer(wordpiece_data(lowercase, strip));
    for (const auto& [name, text] : texts) {
      EXPECT_EQ(framed(*tok, text), rule.at("ids").at(name).get<std::vector<int32_t>>())
          << name << " with lowercase " << lowercase << ", strip_accents " << strip;
    }
  }
}

TEST(WordPiece, MatchesReferenceOnRandomUnicode) {
  const nlohmann::json expected = test::read_json("tok_wordpiece_expected.json");
  const std::string text = test::random_text();
  for (const auto& rule : expected.at("rules")) {
    const auto tok = make_tokenizer(wordpiece_data(rule.at("lowercase"), rule.at("strip_accents")));
    const std::vector<int32_t> ids = framed(*tok, text);
    EXPECT_EQ(ids.size(), rule.at("random").at("count").get<size_t>()) << rule.dump().substr(0, 60);
    EXPECT_EQ(test::fnv1a64_hex(ids), rule.at("random").at("fnv1a64").get<std::string>());
  }
}

TEST(WordPiece, WordsFollowTheBertRules) {
  const BertTextRules uncased{true, true}, cased{false, false};
  EXPECT_EQ(bert_words("Héllo, WORLD!  x\ty", uncased),
            (std::vector<std::string>{"hello", ",", "world", "!", "x", "y"}));
  EXPECT_EQ(bert_words("Héllo, WORLD!", cased), (std::vector<std::string>{"Héllo", ",", "WORLD", "!"}));
  EXPECT_EQ(bert_words("ab中文cd", cased), (std::vector<std::string>{"ab", "中", "文", "cd"}));
  EXPECT_EQ(bert_words("a\x01" "b\xE2\x80\x8B" "c", cased), (std::vector<std::string>{"abc"}));  // dropped controls
  // İ decomposes to I and a dot above: stripped, then lower-cased, or lower-cased with its dot kept.
  EXPECT_EQ(bert_words("İ", uncased), (std::vector<std::string>{"i"}));
  EXPECT_EQ(bert_words("İ", BertTextRules{true, false}), (std::vector<std::string>{"i\xCC\x87"}));
  EXPECT_TRUE(bert_words(" \t\n ", uncased).empty());
}

TEST(WordPiece, DecodeJoinsContinuations) {
  const auto tok = make_tokenizer(wordpiece_data(true, true));
  const std::vector<int32_t> ids = tok->encode("the quick brown fox", false);
  EXPECT_EQ(tok->decode(ids), "the quick brown fox");
  const int32_t cls = tok->bos_id();
  EXPECT_EQ(tok->decode(std::vector<int32_t>{cls, ids[0]}, true), "the");
}

TEST(WordPiece, RulesAndVocabularyAreChecked) {
  EXPECT_THROW((void)bert_text_rules("bert-other", true), Error);
  EXPECT_EQ(bert_text_rules("bert-keep-accents", true).strip_accents, false);
  EXPECT_EQ(bert_text_rules("bert", false).strip_accents, false);
  TokenizerData d = wordpiece_data(true, true);
  d.unk_id = -1;
  EXPECT_THROW((void)make_tokenizer(d), Error);
}

}  // namespace
}  // namespace kiln
