// The SentencePiece tokenizer against the reference (gen_tok_fixtures.py): the Llama 2 pipeline of the
// `tokenizers` package, equal to the `sentencepiece` package wherever no special-token text occurs.
// Both ways a model arrives are checked: the .model embedded, and a GGUF-style vocabulary rebuilt
// into a model.
#include <gtest/gtest.h>

#include "engine/error.h"
#include "tests/tokenizer/tok_fixtures.h"
#include "tokenizer/spm_proto.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace kiln {
namespace {

class SpmTokenizer : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    data_ = test::spm_data(GetParam());
    tokenizer_ = make_tokenizer(data_);
    expected_ = test::read_json("tok_spm_expected.json");
  }
  TokenizerData data_;
  std::unique_ptr<Tokenizer> tokenizer_;
  nlohmann::json expected_;
};

TEST_P(SpmTokenizer, IdsMatchReferenceOnCorpus) {
  for (const auto& c : test::corpus()) {
    const auto want = expected_.at("ids").at(c.name).get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer_->encode(c.bytes, false), want) << c.name;
  }
}

TEST_P(SpmTokenizer, IdsMatchReferenceOnRandomUnicode) {
  const std::vector<int32_t> want = test::read_ids("tok_random_spm_ids.txt");
  const std::vector<int32_t> got = tokenizer_->encode(test::random_text(), false);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "first difference at id " << i;
  // Lossy only where the text itself holds U+2581, which decodes as a space.
  const std::string decoded = tokenizer_->decode(got);
  EXPECT_EQ(decoded.size(), expected_.at("random_decode").at("bytes").get<size_t>());
  EXPECT_EQ(test::fnv1a64_hex(decoded), expected_.at("random_decode").at("fnv1a64").get<std::string>());
}

TEST_P(SpmTokenizer, DecodeMatchesReferenceAndInvertsEncode) {
  for (const auto& c : test::corpus()) {
    const std::string decoded = tokenizer_->decode(tokenizer_->encode(c.bytes, false));
    EXPECT_EQ(decoded, expected_.at("decoded").at(c.name).get<std::string>()) << c.name;
    // Lossless unless special tokens cut the text (each part then gets its own dummy-prefix space).
    if (c.name != "specials") {
      EXPECT_EQ(decoded, c.text) << c.name;
    }
  }
}

TEST_P(SpmTokenizer, SpecialTokensAndBos) {
  EXPECT_EQ(tokenizer_->n_vocab(), static_cast<int32_t>(expected_.at("pieces").size()));
  EXPECT_EQ(tokenizer_->token_to_piece(1), "<s>");
  EXPECT_TRUE(tokenizer_->adds_bos());
  const auto plain = tokenizer_->encode("Hello world", false);
  auto with_bos = plain;
  with_bos.insert(with_bos.begin(), 1);
  EXPECT_EQ(tokenizer_->encode("Hello world", true), with_bos);
  EXPECT_TRUE(tokenizer_->is_eog(2));
  // The dummy-prefix space comes off the decoded text, once.
  EXPECT_EQ(tokenizer_->decode(plain), "Hello world");
  EXPECT_EQ(tokenizer_->decode(with_bos, true), "Hello world");
  EXPECT_EQ(tokenizer_->decode(with_bos), "<s> Hello world");
  // Byte-fallback pieces decode to their byte.
  const int32_t newline = tokenizer_->piece_to_id("<0x0A>");
  ASSERT_GE(newline, 0);
  EXPECT_EQ(tokenizer_->token_bytes(newline), "\n");
}

TEST_P(SpmTokenizer, StreamingMatchesDecode) {
  for (const auto& c : test::corpus()) {
    const auto ids = tokenizer_->encode(c.bytes, true);
    StreamDecoder stream(*tokenizer_);
    std::string joined;
    for (int32_t id : ids) {
      const std::string piece = stream.push(id);
      EXPECT_TRUE(utf8_is_valid(piece));
      joined += piece;
    }
    joined += stream.flush();
    EXPECT_EQ(joined, utf8_sanitize(tokenizer_->decode(ids, true))) << c.name;
  }
}

INSTANTIATE_TEST_SUITE_P(EmbeddedAndRebuilt, SpmTokenizer, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "FromVocabulary" : "FromModelProto"; });

TEST(SpmProto, RejectsBrokenVocabularies) {
  TokenizerData d = test::spm_data(true);
  d.scores.pop_back();
  EXPECT_THROW((void)build_spm_model_proto(d), Error);
  d = test::spm_data(true);
  d.token_types[0] = 1;  // no unknown piece left
  EXPECT_THROW((void)build_spm_model_proto(d), Error);
  d = test::spm_data(true);
  d.token_types[5] = 9;
  EXPECT_THROW((void)build_spm_model_proto(d), Error);
  d = test::spm_data(false);
  d.spm_model = "not a model proto";
  d.tokens.clear();
  EXPECT_THROW((void)make_tokenizer(d), Error);
}

}  // namespace
}  // namespace kiln
