// The SmolLM2 byte-level BPE tokenizer against the `tokenizers` package (gen_tok_fixtures.py): ids on
// the whole corpus, the same vocabulary behind the other splits, round trips and streaming.
#include <gtest/gtest.h>

#include "engine/error.h"
#include "tests/tokenizer/tok_fixtures.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace kiln {
namespace {

class SmolLm2Tokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new TokenizerData(test::smollm2_data());
    tokenizer_ = make_tokenizer(*data_).release();
    expected_ = new nlohmann::json(test::read_json("tok_bpe_expected.json"));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete data_;
    delete expected_;
  }
  static TokenizerData* data_;
  static Tokenizer* tokenizer_;
  static nlohmann::json* expected_;
};
TokenizerData* SmolLm2Tokenizer::data_ = nullptr;
Tokenizer* SmolLm2Tokenizer::tokenizer_ = nullptr;
nlohmann::json* SmolLm2Tokenizer::expected_ = nullptr;

TEST_F(SmolLm2Tokenizer, IdsMatchReferenceOnCorpus) {
  for (const auto& c : test::corpus()) {
    const auto want = expected_->at("ids").at("smollm").at(c.name).get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer_->encode(c.bytes, false), want) << c.name;
  }
}

TEST_F(SmolLm2Tokenizer, IdsMatchReferenceOnRandomUnicode) {
  const std::vector<int32_t> want = test::read_ids("tok_random_smollm2_ids.txt");
  const std::vector<int32_t> got = tokenizer_->encode(test::random_text(), false);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "first difference at id " << i;
  // The vocabulary lacks some bytes (0xF5..0xFF, ...): decoding gives what the reference gives.
  const std::string decoded = utf8_sanitize(tokenizer_->decode(got));
  EXPECT_EQ(decoded.size(), expected_->at("random_decode").at("bytes").get<size_t>());
  EXPECT_EQ(test::fnv1a64_hex(decoded), expected_->at("random_decode").at("fnv1a64").get<std::string>());
}

TEST_F(SmolLm2Tokenizer, SameVocabularyBehindOtherSplits) {
  for (const char* pre : {"gpt2", "llama3", "qwen2", "bloom"}) {
    TokenizerData d = *data_;
    d.pre_tokenizer = pre;
    const auto tok = make_tokenizer(d);
    for (const auto& c : test::corpus()) {
      const auto want = expected_->at("ids").at(pre).at(c.name).get<std::vector<int32_t>>();
      EXPECT_EQ(tok->encode(c.bytes, false), want) << pre << " on " << c.name;
    }
  }
}

TEST_F(SmolLm2Tokenizer, DecodeInvertsEncode) {
  for (const auto& c : test::corpus()) {
    EXPECT_EQ(tokenizer_->decode(tokenizer_->encode(c.bytes, false)), c.text) << c.name;
  }
}

TEST_F(SmolLm2Tokenizer, SpecialTokens) {
  EXPECT_EQ(tokenizer_->n_vocab(), 49152);
  EXPECT_EQ(tokenizer_->bos_id(), 1);
  EXPECT_EQ(tokenizer_->eos_id(), 2);
  EXPECT_TRUE(tokenizer_->is_eog(2));
  EXPECT_FALSE(tokenizer_->is_eog(1));
  EXPECT_FALSE(tokenizer_->adds_bos());  // SmolLM2 adds no BOS even when asked
  EXPECT_EQ(tokenizer_->encode("Hi", true), tokenizer_->encode("Hi", false));
  EXPECT_EQ(tokenizer_->encode("<|im_start|>", false), std::vector<int32_t>{1});
  EXPECT_EQ(tokenizer_->token_to_piece(2), "<|im_end|>");
  EXPECT_EQ(tokenizer_->piece_to_id("<|im_end|>"), 2);
  EXPECT_EQ(tokenizer_->piece_to_id("no such piece"), -1);
  // Without special parsing the marker is plain text.
  EXPECT_GT(tokenizer_->encode("<|im_start|>", false, false).size(), 1u);
  EXPECT_EQ(tokenizer_->decode(std::vector<int32_t>{1, 2}, true), "");
  EXPECT_EQ(tokenizer_->decode(std::vector<int32_t>{1}), "<|im_start|>");
  EXPECT_THROW((void)tokenizer_->decode(std::vector<int32_t>{49152}), Error);
  EXPECT_THROW((void)tokenizer_->decode(std::vector<int32_t>{-1}), Error);
}

TEST_F(SmolLm2Tokenizer, BosWhenTheModelAddsOne) {
  TokenizerData d = *data_;
  d.add_bos = true;
  const auto tok = make_tokenizer(d);
  const auto with = tok->encode("Hello", true);
  ASSERT_FALSE(with.empty());
  EXPECT_EQ(with[0], 1);
  EXPECT_EQ(std::vector<int32_t>(with.begin() + 1, with.end()), tok->encode("Hello", false));
}

TEST_F(SmolLm2Tokenizer, StreamingNeverSplitsACharacter) {
  std::vector<std::string> texts;
  for (const auto& c : test::corpus()) texts.push_back(c.bytes);
  texts.push_back(test::random_text().substr(0, 20000));
  for (const std::string& text : texts) {
    const auto ids = tokenizer_->encode(text, false);
    StreamDecoder stream(*tokenizer_, false);
    std::string joined;
    for (int32_t id : ids) {
      const std::string piece = stream.push(id);
      EXPECT_TRUE(utf8_is_valid(piece));
      joined += piece;
    }
    joined += stream.flush();
    EXPECT_EQ(joined, utf8_sanitize(tokenizer_->decode(ids)));
  }
}

TEST_F(SmolLm2Tokenizer, StreamingHoldsBackPartialCharacters) {
  // "中" (E4 B8 AD) fed as three single-byte tokens.
  std::vector<int32_t> ids;
  for (unsigned char b : std::string("\xE4\xB8\xAD")) {
    std::string ch;
    utf8_append(ch, byte_to_unicode(b));
    ids.push_back(tokenizer_->piece_to_id(ch));
  }
  ASSERT_NE(ids[0], -1);
  StreamDecoder stream(*tokenizer_);
  EXPECT_EQ(stream.push(ids[0]), "");
  EXPECT_EQ(stream.push(ids[1]), "");
  EXPECT_EQ(stream.push(ids[2]), "\xE4\xB8\xAD");
  EXPECT_EQ(stream.push(ids[0]), "");
  EXPECT_EQ(stream.flush(), "\xEF\xBF\xBD");
}

}  // namespace
}  // namespace kiln
