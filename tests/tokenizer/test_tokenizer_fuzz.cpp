// Random bytes and random ids never crash encode or decode, and the stream decoder emits valid UTF-8.
#include <gtest/gtest.h>

#include <random>

#include "engine/error.h"
#include "tests/tokenizer/tok_fixtures.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace kiln {
namespace {

void fuzz(const Tokenizer& tok, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255), len(0, 300);
  // Bytes skewed toward '<', '|', spaces and UTF-8 lead bytes to reach the special-token and
  // pre-tokenizer branches often.
  const std::string hot = "<|> \n\t'0aZ\xC3\xE4\xF0\x80\xBF";
  for (int round = 0; round < 400; ++round) {
    std::string text;
    const int n = len(rng);
    for (int i = 0; i < n; ++i) {
      text += (rng() % 3 == 0) ? hot[rng() % hot.size()] : static_cast<char>(byte(rng));
    }
    const auto ids = tok.encode(text, round % 2 == 0);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok.n_vocab());
    const std::string decoded = tok.decode(ids);
    (void)decoded;
    StreamDecoder stream(tok, round % 3 == 0);
    std::vector<int32_t> random_ids;
    for (int i = 0; i < 50; ++i) random_ids.push_back(static_cast<int32_t>(rng() % tok.n_vocab()));
    std::string joined;
    for (int32_t id : random_ids) {
      const std::string piece = stream.push(id);
      ASSERT_TRUE(utf8_is_valid(piece));
      joined += piece;
    }
    joined += stream.flush();
    ASSERT_TRUE(utf8_is_valid(joined));
    ASSERT_EQ(joined, utf8_sanitize(tok.decode(random_ids, round % 3 == 0)));
  }
  EXPECT_THROW((void)tok.decode(std::vector<int32_t>{tok.n_vocab()}), Error);
}

TEST(TokenizerFuzz, BytePairRandomBytes) { fuzz(*make_tokenizer(test::smollm2_data()), 1); }
TEST(TokenizerFuzz, SentencePieceRandomBytes) { fuzz(*make_tokenizer(test::spm_data(true)), 2); }

TEST(TokenizerFuzz, BadDataThrows) {
  TokenizerData d = test::smollm2_data();
  d.bos_id = 1 << 20;
  EXPECT_THROW((void)make_tokenizer(d), Error);
  d = test::smollm2_data();
  d.token_types.pop_back();
  EXPECT_THROW((void)make_tokenizer(d), Error);
  d = test::smollm2_data();
  d.merges.push_back("nospace");
  EXPECT_THROW((void)make_tokenizer(d), Error);
  d = test::smollm2_data();
  d.pre_tokenizer = "unknown-split";
  EXPECT_THROW((void)make_tokenizer(d), Error);
  d.tokens.clear();
  EXPECT_THROW((void)make_tokenizer(d), Error);
}

}  // namespace
}  // namespace kiln
