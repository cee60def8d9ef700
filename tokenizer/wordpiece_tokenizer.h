// WordPiece (BERT): the BERT text rules (drop control characters, space out CJK ideographs, optionally
// strip accents and lower-case, split on whitespace and punctuation), then each word greedily into the
// longest vocabulary pieces from its start, continuations spelled "##piece". A word the pieces cannot
// cover, or longer than 100 characters, becomes the unknown token.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kiln {

// What the stored rule name ("bert", "bert-strip-accents", "bert-keep-accents") and lowercase flag ask
// for. Throws kiln::Error for another name.
struct BertTextRules {
  bool lowercase = true;
  bool strip_accents = true;
};
[[nodiscard]] BertTextRules bert_text_rules(std::string_view name, bool lowercase);

// The words of valid UTF-8 text after the BERT text rules, before WordPiece.
[[nodiscard]] std::vector<std::string> bert_words(std::string_view text, const BertTextRules& rules);

[[nodiscard]] std::unique_ptr<Tokenizer> make_wordpiece_tokenizer(const TokenizerData& data);

}  // namespace kiln
