#include "tokenizer/wordpiece_tokenizer.h"

#include <algorithm>
#include <array>
#include <iterator>

#include "engine/error.h"
#include "tokenizer/utf8.h"

namespace kiln {
namespace {

enum WordPieceFlag : uint8_t { kWpRemove = 1, kWpSpace = 2, kWpPunct = 4, kWpCjk = 8, kWpMark = 16 };

struct FlagRange {
  uint32_t first, last;
  int flags;
};

struct Mapping {
  uint32_t code_point;
  const char* utf8;
};

constexpr FlagRange kRanges[] = {
#define KILN_WORDPIECE_RANGES
#include "tokenizer/wordpiece_tables.inc"
#undef KILN_WORDPIECE_RANGES
};

constexpr Mapping kStrip[] = {
#define KILN_WORDPIECE_STRIP
#include "tokenizer/wordpiece_tables.inc"
#undef KILN_WORDPIECE_STRIP
};

constexpr Mapping kLower[] = {
#define KILN_WORDPIECE_LOWER
#include "tokenizer/wordpiece_tables.inc"
#undef KILN_WORDPIECE_LOWER
};

constexpr std::array<uint8_t, 128> make_ascii_flags() {
  std::array<uint8_t, 128> table{};
  for (const FlagRange& r : kRanges)
    for (uint32_t cp = r.first; cp <= r.last && cp < 128; ++cp) table[cp] = uint8_t(r.flags);
  return table;
}

constexpr std::array<uint8_t, 128> kAsciiFlags = make_ascii_flags();

int flags_of(uint32_t cp) {
  if (cp < 128) return kAsciiFlags[cp];
  const auto* it = std::upper_bound(std::begin(kRanges), std::end(kRanges), cp,
                                    [](uint32_t value, const FlagRange& r) { return value < r.first; });
  if (it == std::begin(kRanges)) return 0;
  --it;
  return cp <= it->last ? it->flags : 0;
}

// The table's UTF-8 for cp, or nullptr when cp maps to itself.
template <size_t N>
const char* mapped(const Mapping (&table)[N], uint32_t cp) {
  const auto* it = std::lower_bound(std::begin(table), std::end(table), cp,
                                    [](const Mapping& m, uint32_t value) { return m.code_point < value; });
  return it != std::end(table) && it->code_point == cp ? it->utf8 : nullptr;
}

constexpr uint32_t kHangulFirst = 0xAC00, kHangulLast = 0xD7A3;

// Appends the code points of a UTF-8 string from the tables (always valid).
void append_code_points(const char* utf8, std::vector<uint32_t>& out) {
  const std::string_view s(utf8);
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Char c = utf8_decode(s, pos);
    out.push_back(c.code_point);
    pos += c.length;
  }
}

// One character after accent stripping and lower-casing (either may give several characters, or none).
void normalize_char(uint32_t cp, int flags, const BertTextRules& rules, std::vector<uint32_t>& out) {
  std::vector<uint32_t> stripped;
  if (rules.strip_accents && (flags & kWpMark)) return;
  if (rules.strip_accents && cp >= kHangulFirst && cp <= kHangulLast) {
    // The Unicode algorithm: leading consonant, vowel and, unless none, trailing consonant jamo.
    const uint32_t s = cp - kHangulFirst;
    stripped = {0x1100 + s / 588, 0x1161 + (s % 588) / 28};
    if (s % 28) stripped.push_back(0x11A7 + s % 28);
  } else if (const char* decomposed = rules.strip_accents ? mapped(kStrip, cp) : nullptr) {
    append_code_points(decomposed, stripped);
  } else {
    stripped = {cp};
  }
  for (uint32_t c : stripped) {
    const char* lower = rules.lowercase ? mapped(kLower, c) : nullptr;
    if (lower) {
      append_code_points(lower, out);
    } else {
      out.push_back(c);
    }
  }
}

class WordPieceTokenizer final : public Tokenizer {
 public:
  explicit WordPieceTokenizer(const TokenizerData& data)
      : Tokenizer(data), rules_(bert_text_rules(data.pre_tokenizer, data.lowercase)) {
    KILN_CHECK(unk_id() >= 0, "the WordPiece tokenizer has no unknown token: convert the model again");
    // Decoding joins words with spaces and "##" pieces to the word before; the text starts without one.
    set_strip_leading_space(true);
  }

 protected:
  void encode_text(std::string_view text, std::vector<int32_t>& out) const override {
    for (const std::string& word : bert_words(text, rules_)) encode_word(word, out);
  }

  std::string normal_token_bytes(int32_t id) const override {
    const std::string& piece = pieces()[size_t(id)];
    return piece.starts_with("##") ? piece.substr(2) : " " + piece;
  }

 private:
  static constexpr size_t kMaxWordChars = 100;

  void encode_word(const std::string& word, std::vector<int32_t>& out) const {
    std::vector<size_t> bounds;  // byte offset of each character, then the end
    for (size_t pos = 0; pos < word.size(); pos += utf8_decode(word, pos).length) bounds.push_back(pos);
    bounds.push_back(word.size());
    const size_t n_chars = bounds.size() - 1;
    if (n_chars > kMaxWordChars) {
      out.push_back(unk_id());
      return;
    }
    const size_t first = out.size();
    std::string candidate;
    for (size_t start = 0; start < n_chars;) {
      int32_t id = -1;
      size_t end = n_chars;
      for (; end > start; --end) {
        candidate.assign(start > 0 ? "##" : "");
        candidate.append(word, bounds[start], bounds[end] - bounds[start]);
        id = piece_to_id(candidate);
        if (id >= 0) break;
      }
      if (id < 0) {  // the word cannot be covered: it is unknown as a whole
        out.resize(first);
        out.push_back(unk_id());
        return;
      }
      out.push_back(id);
      start = end;
    }
  }

  BertTextRules rules_;
};

}  // namespace

BertTextRules bert_text_rules(std::string_view name, bool lowercase) {
  BertTextRules rules{lowercase, lowercase};
  if (name == "bert" || name.empty()) return rules;
  if (name == "bert-strip-accents") rules.strip_accents = true;
  else if (name == "bert-keep-accents") rules.strip_accents = false;
  else fail("WordPiece text rule '{}' is unknown (bert, bert-strip-accents, bert-keep-accents): convert the model "
            "again", name);
  return rules;
}

std::vector<std::string> bert_words(std::string_view text, const BertTextRules& rules) {
  std::vector<std::string> words;
  std::string word;
  auto flush = [&] {
    if (!word.empty()) words.push_back(std::move(word));
    word.clear();
  };
  std::vector<uint32_t> normalized;
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char c = utf8_decode(text, pos);
    pos += c.length;
    KILN_CHECK(c.status == Utf8Status::Ok, "WordPiece input is not valid UTF-8");
    const int flags = flags_of(c.code_point);
    if (flags & kWpRemove) continue;
    if (flags & kWpSpace) {
      flush();
      continue;
    }
    normalized.clear();
    normalize_char(c.code_point, flags, rules, normalized);
    if (flags & kWpCjk) flush();  // a CJK ideograph is a word of its own
    for (uint32_t n : normalized) {
      if (flags_of(n) & kWpPunct) {
        flush();
        utf8_append(word, n);
        flush();
      } else {
        utf8_append(word, n);
      }
    }
    if (flags & kWpCjk) flush();
  }
  flush();
  return words;
}

std::unique_ptr<Tokenizer> make_wordpiece_tokenizer(const TokenizerData& data) {
  return std::make_unique<WordPieceTokenizer>(data);
}

}  // namespace kiln
