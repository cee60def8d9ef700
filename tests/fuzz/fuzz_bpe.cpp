// Byte-level BPE (the SmolLM2 vocabulary behind each pre-tokenizer split): encode any bytes, with and
// without special tokens; decode and stream-decode the result and arbitrary ids.
// Input: one byte choosing the split and the flags, then the text.
#include <memory>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_tokenizer_check.h"
#include "tests/tokenizer/tok_fixtures.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace {

constexpr const char* kSplits[] = {"smollm", "gpt2", "llama3", "qwen2", "bloom"};

std::vector<std::unique_ptr<kiln::Tokenizer>>& tokenizers() {
  static std::vector<std::unique_ptr<kiln::Tokenizer>> all = [] {
    std::vector<std::unique_ptr<kiln::Tokenizer>> out;
    for (const char* split : kSplits) {
      kiln::TokenizerData data = kiln::test::smollm2_data();
      data.pre_tokenizer = split;
      out.push_back(kiln::make_tokenizer(data));
    }
    return out;
  }();
  return all;
}

bool has_byte_token(const kiln::Tokenizer& tok, uint8_t b) {
  std::string piece;
  kiln::utf8_append(piece, kiln::byte_to_unicode(b));
  return tok.piece_to_id(piece) >= 0;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tokenizers();  // loads the 1 MB vocabulary once, outside the timed inputs
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t selector = data[0];
  const kiln::Tokenizer& tok = *tokenizers()[selector % std::size(kSplits)];
  const bool parse_special = selector & 0x10, add_bos = selector & 0x20, skip_special = selector & 0x40;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  const std::vector<int32_t> ids = tok.encode(text, add_bos, parse_special);
  kiln::fuzz::check_ids_and_stream(tok, ids, skip_special);
  // Byte-level BPE loses only the bytes its vocabulary has no token for (SmolLM2 lacks a few control
  // bytes; the reference drops them too): the text comes back, invalid UTF-8 replaced as the encoder
  // replaced it, less those bytes.
  std::string expected;
  for (char c : kiln::utf8_sanitize(text))
    if (has_byte_token(tok, uint8_t(c))) expected += c;
  KILN_FUZZ_ASSERT(tok.decode(tok.encode(text, false, parse_special)) == expected);
  kiln::fuzz::check_ids_and_stream(tok, kiln::fuzz::ids_from_bytes(text, tok.n_vocab()), skip_special);
  return 0;
}
