// The hand-written splits against the reference regex engine (tests/data/tok_bpe_expected.json).
#include <gtest/gtest.h>

#include "engine/error.h"
#include "tests/tokenizer/tok_fixtures.h"
#include "tokenizer/pre_tokenize.h"
#include "tokenizer/unicode_class.h"
#include "tokenizer/utf8.h"

namespace kiln {
namespace {

std::vector<size_t> piece_ends(PreTokenizer kind, const std::string& text) {
  std::vector<PieceSpan> spans;
  pre_tokenize(kind, text, spans);
  std::vector<size_t> ends;
  size_t expected_begin = 0;
  for (const PieceSpan& s : spans) {
    EXPECT_EQ(s.begin, expected_begin) << "pieces must cover the text in order";
    EXPECT_GT(s.end, s.begin);
    expected_begin = s.end;
    ends.push_back(s.end);
  }
  return ends;
}

TEST(PreTokenize, MatchesReferenceSplitsOnCorpus) {
  const auto expected = test::read_json("tok_bpe_expected.json").at("splits");
  const auto texts = test::corpus();
  const std::string random = test::random_text();
  for (const char* name : {"gpt2", "llama3", "qwen2", "bloom", "smollm"}) {
    const PreTokenizer kind = pre_tokenizer_from_name(name);
    for (const auto& c : texts) {
      const auto want = expected.at(name).at(c.name).get<std::vector<size_t>>();
      EXPECT_EQ(piece_ends(kind, c.text), want) << name << " on " << c.name;
    }
    const auto ends = piece_ends(kind, random);
    std::vector<int32_t> ends32(ends.begin(), ends.end());
    EXPECT_EQ(ends.size(), expected.at(name).at("random").at("count").get<size_t>()) << name;
    EXPECT_EQ(test::fnv1a64_hex(ends32), expected.at(name).at("random").at("fnv1a64").get<std::string>()) << name;
  }
}

TEST(PreTokenize, HandPickedCases) {
  // Each expectation is what the model's regex gives (checked against the reference engine).
  auto pieces = [](PreTokenizer kind, const std::string& text) {
    std::vector<PieceSpan> spans;
    pre_tokenize(kind, text, spans);
    std::vector<std::string> out;
    for (const auto& s : spans) out.push_back(text.substr(s.begin, s.end - s.begin));
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces(PreTokenizer::Gpt2, "I'm  here\n"), (V{"I", "'m", " ", " here", "\n"}));
  EXPECT_EQ(pieces(PreTokenizer::Llama3, "12345 'RE x\r\n\n y"), (V{"123", "45", " '", "RE", " x", "\r\n\n", " y"}));
  EXPECT_EQ(pieces(PreTokenizer::Qwen2, "x123"), (V{"x", "1", "2", "3"}));
  EXPECT_EQ(pieces(PreTokenizer::SmolLm, "a 12b"), (V{"a", " ", "1", "2", "b"}));
  EXPECT_EQ(pieces(PreTokenizer::Bloom, "Hi, you  there!!"), (V{"Hi", ",", " you", " ", " there", "!!"}));
  EXPECT_TRUE(pieces(PreTokenizer::Gpt2, "").empty());
}

TEST(PreTokenize, UnknownNameListsChoices) {
  try {
    (void)pre_tokenizer_from_name("tekken");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama3"), std::string::npos);
  }
  EXPECT_EQ(pre_tokenizer_from_name("llama-bpe"), PreTokenizer::Llama3);
  EXPECT_EQ(pre_tokenizer_from_name("gpt-2"), PreTokenizer::Gpt2);
}

TEST(UnicodeClass, KnownCategories) {
  EXPECT_EQ(unicode_class('A'), kLetter);
  EXPECT_EQ(unicode_class('7'), kNumber);
  EXPECT_EQ(unicode_class(' '), kSpace);
  EXPECT_EQ(unicode_class('_'), kOther);
  EXPECT_EQ(unicode_class(0x0663), kNumber);   // ARABIC-INDIC DIGIT THREE
  EXPECT_EQ(unicode_class(0x00B2), kNumber);   // SUPERSCRIPT TWO (No)
  EXPECT_EQ(unicode_class(0x3000), kSpace);    // IDEOGRAPHIC SPACE
  EXPECT_EQ(unicode_class(0x0085), kSpace);    // NEXT LINE
  EXPECT_EQ(unicode_class(0x200B), kOther);    // ZERO WIDTH SPACE is not White_Space
  EXPECT_EQ(unicode_class(0x1C), kOther);
  EXPECT_EQ(unicode_class(0x4E2D), kLetter);   // CJK
  EXPECT_EQ(unicode_class(0x10D4A), kLetter);  // GARAY, new in Unicode 16.0
  EXPECT_EQ(unicode_class(0x0301), kOther);    // combining acute (Mn)
  EXPECT_EQ(unicode_class(0x1F600), kOther);   // emoji
  EXPECT_EQ(unicode_class(0x10FFFF), kOther);
}

TEST(Utf8, SanitizeMatchesPythonReplace) {
  for (const auto& c : test::corpus()) {
    EXPECT_EQ(utf8_sanitize(c.bytes), c.text) << c.name;
    EXPECT_EQ(utf8_is_valid(c.bytes), c.bytes == c.text) << c.name;
  }
  EXPECT_EQ(utf8_sanitize("\xE2\x82"), "\xEF\xBF\xBD");           // truncated: one replacement
  EXPECT_EQ(utf8_sanitize("\xF0\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong: one per byte
}

}  // namespace
}  // namespace kiln
