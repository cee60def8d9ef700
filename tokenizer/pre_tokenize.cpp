#include "tokenizer/pre_tokenize.h"

#include <cstdint>

#include "engine/error.h"
#include "tokenizer/unicode_class.h"
#include "tokenizer/utf8.h"

namespace kiln {

namespace {

// The text as code points with their classes; offsets[i] is the byte offset of code point i.
struct CodePoints {
  std::vector<uint32_t> cp;
  std::vector<uint8_t> cls;
  std::vector<size_t> offsets;

  explicit CodePoints(std::string_view text) {
    cp.reserve(text.size());
    cls.reserve(text.size());
    offsets.reserve(text.size() + 1);
    size_t pos = 0;
    while (pos < text.size()) {
      const Utf8Char c = utf8_decode(text, pos);
      // Callers pass sanitized text; a stray bad byte still gets a class instead of a crash.
      const uint32_t value = c.status == Utf8Status::Ok ? c.code_point : 0xFFFD;
      offsets.push_back(pos);
      cp.push_back(value);
      cls.push_back(unicode_class(value));
      pos += c.length;
    }
    offsets.push_back(text.size());
  }
};

// A window [0, n) over decoded code points: matches never look past n (the regex's end of text).
struct Chars {
  const uint32_t* cp;   // [n]
  const uint8_t* cls;   // [n]
  size_t n;

  bool letter(size_t i) const { return i < n && cls[i] == kLetter; }
  bool number(size_t i) const { return i < n && cls[i] == kNumber; }
  bool space(size_t i) const { return i < n && cls[i] == kSpace; }
  bool other(size_t i) const { return i < n && cls[i] == kOther; }
  bool is(size_t i, uint32_t c) const { return i < n && cp[i] == c; }
  bool newline(size_t i) const { return is(i, '\r') || is(i, '\n'); }

  template <typename Pred>
  size_t run(size_t i, Pred pred) const {
    while (i < n && pred(i)) ++i;
    return i;
  }
};

// Case-insensitive ASCII letter match, with the one non-ASCII case fold the contractions meet:
// U+017F LATIN SMALL LETTER LONG S folds to 's'.
bool fold_eq(uint32_t c, char lower) {
  if (c == static_cast<uint32_t>(lower) || c == static_cast<uint32_t>(lower - 'a' + 'A')) return true;
  return lower == 's' && c == 0x17F;
}

// 's|'t|'re|'ve|'m|'ll|'d, returns the end or 0 when none matches.
size_t match_contraction(const Chars& t, size_t i, bool ignore_case) {
  if (!t.is(i, '\'') || i + 1 >= t.n) return 0;
  auto eq = [&](size_t k, char c) {
    if (k >= t.n) return false;
    return ignore_case ? fold_eq(t.cp[k], c) : t.cp[k] == static_cast<uint32_t>(c);
  };
  for (char c : {'s', 't', 'm', 'd'}) {
    if (eq(i + 1, c)) return i + 2;
  }
  if ((eq(i + 1, 'r') && eq(i + 2, 'e')) || (eq(i + 1, 'v') && eq(i + 2, 'e')) ||
      (eq(i + 1, 'l') && eq(i + 2, 'l'))) {
    return i + 3;
  }
  return 0;
}

// \s+(?!\S)|\s+ at a whitespace character: a run followed by non-space gives back its last
// character so that character can lead the next piece.
size_t match_space_run(const Chars& t, size_t i) {
  const size_t end = t.run(i, [&](size_t k) { return t.space(k); });
  if (end == t.n || end - i < 2) return end;
  return end - 1;
}

// One match of the GPT-2 regex starting at i (always matches: every character has a class).
size_t match_gpt2(const Chars& t, size_t i) {
  if (size_t e = match_contraction(t, i, false)) return e;
  //  ?\p{L}+,  ?\p{N}+,  ?[^\s\p{L}\p{N}]+ in that order
  const bool sp = t.is(i, ' ');
  for (uint8_t cls : {kLetter, kNumber, kOther}) {
    auto in_class = [&](size_t k) { return k < t.n && t.cls[k] == cls; };
    if (in_class(i)) return t.run(i, in_class);
    if (sp && in_class(i + 1)) return t.run(i + 1, in_class);
  }
  return match_space_run(t, i);
}

// One match of the Llama 3 (max_digits 3) or Qwen2 (max_digits 1) regex starting at i.
size_t match_llama3(const Chars& t, size_t i, size_t max_digits) {
  if (size_t e = match_contraction(t, i, true)) return e;
  auto letters = [&](size_t k) { return t.letter(k); };
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (t.letter(i)) return t.run(i, letters);
  if (i < t.n && !t.newline(i) && !t.number(i) && t.letter(i + 1)) return t.run(i + 1, letters);
  // \p{N}{1,max_digits}
  if (t.number(i)) {
    size_t e = i;
    while (e < t.n && e - i < max_digits && t.number(e)) ++e;
    return e;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  const size_t start = t.other(i) ? i : (t.is(i, ' ') && t.other(i + 1)) ? i + 1 : t.n + 1;
  if (start <= t.n) {
    const size_t e = t.run(start, [&](size_t k) { return t.other(k); });
    return t.run(e, [&](size_t k) { return t.newline(k); });
  }
  // \s*[\r\n]+ : the whitespace run up to and including its last line break.
  const size_t end = t.run(i, [&](size_t k) { return t.space(k); });
  for (size_t k = end; k > i; --k) {
    if (t.newline(k - 1)) return k;
  }
  return match_space_run(t, i);
}

// BLOOM's class: anything but whitespace and ( | ) . , ! ? … 。 ， 、 । ۔ ،
bool bloom_word_char(const Chars& t, size_t i) {
  if (i >= t.n || t.space(i)) return false;
  switch (t.cp[i]) {
    case '(': case '|': case ')': case '.': case ',': case '!': case '?':
    case 0x2026: case 0x3002: case 0xFF0C: case 0x3001: case 0x0964: case 0x06D4: case 0x060C:
      return false;
    default:
      return true;
  }
}

// One match of BLOOM's regex at i, or 0 when none starts there (the character joins a gap piece).
size_t match_bloom(const Chars& t, size_t i) {
  size_t start = i;
  if (!bloom_word_char(t, i)) {
    if (!t.is(i, ' ') || !bloom_word_char(t, i + 1)) return 0;
    start = i + 1;
  }
  return t.run(start, [&](size_t k) { return bloom_word_char(t, k); });
}

void emit(const CodePoints& cps, size_t a, size_t b, std::vector<PieceSpan>& out) {
  if (b > a) out.push_back({cps.offsets[a], cps.offsets[b]});
}
}  // namespace

PreTokenizer pre_tokenizer_from_name(std::string_view name) {
  if (name.empty() || name == "gpt2" || name == "gpt-2" || name == "default" || name == "gptj" ||
      name == "gpt-neox" || name == "opt" || name == "olmo") {
    return PreTokenizer::Gpt2;
  }
  if (name == "llama3" || name == "llama-bpe" || name == "llama-3" || name == "smaug-bpe") {
    return PreTokenizer::Llama3;
  }
  if (name == "qwen2" || name == "deepseek-r1-qwen") return PreTokenizer::Qwen2;
  if (name == "smollm" || name == "starcoder" || name == "refact") return PreTokenizer::SmolLm;
  if (name == "bloom") return PreTokenizer::Bloom;
  fail("unknown pre-tokenizer '{}': kiln knows gpt2 (gpt-2, default), llama3 (llama-bpe), qwen2, "
       "smollm (starcoder) and bloom; convert the model from a supported family",
       name);
}

void pre_tokenize(PreTokenizer kind, std::string_view text, std::vector<PieceSpan>& out) {
  out.clear();
  const CodePoints cps(text);
  const Chars t{cps.cp.data(), cps.cls.data(), cps.cp.size()};
  size_t i = 0;
  switch (kind) {
    case PreTokenizer::Gpt2:
      while (i < t.n) {
        const size_t e = match_gpt2(t, i);
        emit(cps, i, e, out);
        i = e;
      }
      break;
    case PreTokenizer::Llama3:
    case PreTokenizer::Qwen2: {
      const size_t max_digits = kind == PreTokenizer::Llama3 ? 3 : 1;
      while (i < t.n) {
        const size_t e = match_llama3(t, i, max_digits);
        emit(cps, i, e, out);
        i = e;
      }
      break;
    }
    case PreTokenizer::SmolLm:
      // Digits split off first; the GPT-2 regex then runs on each stretch between them as on a
      // text of its own, so a match never crosses a digit.
      while (i < t.n) {
        if (t.number(i)) {
          emit(cps, i, i + 1, out);
          ++i;
          continue;
        }
        const size_t stop = t.run(i, [&](size_t k) { return !t.number(k); });
        const Chars part{t.cp + i, t.cls + i, stop - i};
        for (size_t k = 0; k < part.n;) {
          const size_t e = match_gpt2(part, k);
          emit(cps, i + k, i + e, out);
          k = e;
        }
        i = stop;
      }
      break;
    case PreTokenizer::Bloom: {
      size_t gap = 0;
      while (i < t.n) {
        const size_t e = match_bloom(t, i);
        if (e == 0) {
          ++i;
          continue;
        }
        emit(cps, gap, i, out);
        emit(cps, i, e, out);
        i = gap = e;
      }
      emit(cps, gap, t.n, out);
      break;
    }
  }
}

}  // namespace kiln
