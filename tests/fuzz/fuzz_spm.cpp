// SentencePiece: encode any bytes with the embedded .model and with the model rebuilt from the
// vocabulary (as a GGUF "llama" tokenizer stores it), which must agree; decode and stream-decode the
// result and arbitrary ids. Input: one byte of flags, then the text.
#include <memory>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_tokenizer_check.h"
#include "tests/tokenizer/tok_fixtures.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Tokenizers {
  std::unique_ptr<kiln::Tokenizer> embedded = kiln::make_tokenizer(kiln::test::spm_data(false));
  std::unique_ptr<kiln::Tokenizer> rebuilt = kiln::make_tokenizer(kiln::test::spm_data(true));
};

const Tokenizers& tokenizers() {
  static const Tokenizers all;
  return all;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t flags = data[0];
  const bool parse_special = flags & 1, add_bos = flags & 2, skip_special = flags & 4;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const kiln::Tokenizer& embedded = *tokenizers().embedded;
  const kiln::Tokenizer& rebuilt = *tokenizers().rebuilt;

  const std::vector<int32_t> ids = embedded.encode(text, add_bos, parse_special);
  KILN_FUZZ_ASSERT(ids == rebuilt.encode(text, add_bos, parse_special));
  kiln::fuzz::check_ids_and_stream(embedded, ids, skip_special);
  kiln::fuzz::check_ids_and_stream(rebuilt, kiln::fuzz::ids_from_bytes(text, rebuilt.n_vocab()), skip_special);
  return 0;
}
