#include "tokenizer/spm_tokenizer.h"

#include <sentencepiece_processor.h>

#include "engine/error.h"
#include "tokenizer/spm_proto.h"

namespace kiln {

namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's whitespace mark

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(const TokenizerData& data) : Tokenizer(data) {
    const std::string proto = data.spm_model.empty() ? build_spm_model_proto(data) : data.spm_model;
    const auto status = processor_.LoadFromSerializedProto(proto);
    KILN_CHECK(status.ok(), "cannot load the SentencePiece model: {}; convert the model again",
               status.ToString());
    const int n = processor_.GetPieceSize();
    if (data.tokens.empty()) {
      // Only the .model came with the file: take pieces and types from it.
      std::vector<std::string> pieces(n);
      std::vector<int32_t> types(n);
      for (int id = 0; id < n; ++id) {
        pieces[id] = processor_.IdToPiece(id);
        types[id] = static_cast<int32_t>(processor_.IsUnknown(id)  ? TokenType::Unknown
                                         : processor_.IsControl(id) ? TokenType::Control
                                         : processor_.IsByte(id)    ? TokenType::Byte
                                         : processor_.IsUnused(id)  ? TokenType::Unused
                                                                    : TokenType::Normal);
      }
      set_pieces(std::move(pieces), std::move(types));
    }
    KILN_CHECK(n == n_vocab(), "the SentencePiece model has {} pieces but the vocabulary {}: the model file "
               "is inconsistent", n, n_vocab());
    // A dummy prefix shows as a leading U+2581 on the first piece of any word.
    std::vector<std::string> probe;
    (void)processor_.Encode("a", &probe);
    set_strip_leading_space(!probe.empty() && probe[0].starts_with(kSpace));
  }

 protected:
  void encode_text(std::string_view text, std::vector<int32_t>& out) const override {
    std::vector<int> ids;
    const auto status = processor_.Encode(text, &ids);
    KILN_CHECK(status.ok(), "SentencePiece could not encode the text: {}", status.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
  }

  std::string normal_token_bytes(int32_t id) const override {
    const std::string& piece = pieces()[id];
    if (token_type(id) == TokenType::Byte && piece.size() == 6 && piece.starts_with("<0x") && piece[5] == '>') {
      const int hi = hex_digit(piece[3]), lo = hex_digit(piece[4]);
      if (hi >= 0 && lo >= 0) return std::string(1, static_cast<char>(hi * 16 + lo));
    }
    std::string out;
    for (size_t pos = 0; pos < piece.size();) {
      if (std::string_view(piece).substr(pos, kSpace.size()) == kSpace) {
        out += ' ';
        pos += kSpace.size();
      } else {
        out += piece[pos++];
      }
    }
    return out;
  }

 private:
  sentencepiece::SentencePieceProcessor processor_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_spm_tokenizer(const TokenizerData& data) {
  KILN_CHECK(!data.tokens.empty() || !data.spm_model.empty(),
             "the SentencePiece tokenizer has neither a model nor a vocabulary: convert the model again");
  return std::make_unique<SpmTokenizer>(data);
}

}  // namespace kiln
