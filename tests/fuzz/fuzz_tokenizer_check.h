// Invariants every tokenizer keeps on any input, shared by the BPE and SentencePiece entry points.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace kiln::fuzz {

// The ids are in the vocabulary, and streaming them one at a time gives valid UTF-8 equal to the
// sanitized whole decode.
inline void check_ids_and_stream(const Tokenizer& tok, std::span<const int32_t> ids, bool skip_special) {
  for (int32_t id : ids) KILN_FUZZ_ASSERT(id >= 0 && id < tok.n_vocab());
  StreamDecoder stream(tok, skip_special);
  std::string joined;
  for (int32_t id : ids) {
    const std::string piece = stream.push(id);
    KILN_FUZZ_ASSERT(utf8_is_valid(piece));
    joined += piece;
  }
  joined += stream.flush();
  KILN_FUZZ_ASSERT(joined == utf8_sanitize(tok.decode(ids, skip_special)));
}

// Ids from raw input bytes (two bytes each), folded into the vocabulary.
inline std::vector<int32_t> ids_from_bytes(std::string_view bytes, int32_t n_vocab) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < bytes.size(); i += 2)
    ids.push_back(int32_t((uint8_t(bytes[i]) | uint32_t(uint8_t(bytes[i + 1])) << 8) % uint32_t(n_vocab)));
  return ids;
}

}  // namespace kiln::fuzz
