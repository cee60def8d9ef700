#include "tokenizer/spm_proto.h"

#include <cstring>

#include "engine/error.h"

namespace kiln {

namespace {

// Field numbers from sentencepiece_model.proto.
namespace field {
constexpr int kPieces = 1, kTrainerSpec = 2, kNormalizerSpec = 3;
constexpr int kPiece = 1, kScore = 2, kType = 3;
constexpr int kModelType = 3, kVocabSize = 4, kByteFallback = 35, kUnkId = 40, kBosId = 41, kEosId = 42,
              kPadId = 43, kUnkPiece = 45, kBosPiece = 46, kEosPiece = 47;
constexpr int kName = 1, kAddDummyPrefix = 3, kRemoveExtraWhitespaces = 4, kEscapeWhitespaces = 5;
}  // namespace field

constexpr int kModelTypeBpe = 2;

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

void put_tag(std::string& out, int number, int wire_type) {
  put_varint(out, (static_cast<uint64_t>(number) << 3) | static_cast<uint64_t>(wire_type));
}

// int32 fields are sign-extended to 64 bits on the wire, so -1 takes ten bytes.
void put_int(std::string& out, int number, int64_t v) {
  put_tag(out, number, 0);
  put_varint(out, static_cast<uint64_t>(v));
}

void put_bytes(std::string& out, int number, const std::string& bytes) {
  put_tag(out, number, 2);
  put_varint(out, bytes.size());
  out += bytes;
}

void put_float(std::string& out, int number, float v) {
  put_tag(out, number, 5);
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  for (int i = 0; i < 4; ++i) out += static_cast<char>((bits >> (8 * i)) & 0xFF);
}

}  // namespace

std::string build_spm_model_proto(const TokenizerData& data) {
  const size_t n = data.tokens.size();
  KILN_CHECK(n > 0, "the SentencePiece vocabulary is empty: convert the model again");
  KILN_CHECK(data.scores.empty() || data.scores.size() == n,
             "the SentencePiece vocabulary has {} tokens but {} scores: the model file is inconsistent", n,
             data.scores.size());
  KILN_CHECK(data.token_types.empty() || data.token_types.size() == n,
             "the SentencePiece vocabulary has {} tokens but {} types: the model file is inconsistent", n,
             data.token_types.size());
  std::string proto;
  bool has_bytes = false, has_unknown = false;
  for (size_t i = 0; i < n; ++i) {
    int32_t type = data.token_types.empty() ? static_cast<int32_t>(TokenType::Normal) : data.token_types[i];
    KILN_CHECK(type >= 1 && type <= 6, "token {} has type {}, not one of 1..6: the model file is damaged", i, type);
    KILN_CHECK(!data.tokens[i].empty(), "token {} is empty: a SentencePiece vocabulary cannot hold that", i);
    has_bytes |= type == static_cast<int32_t>(TokenType::Byte);
    has_unknown |= type == static_cast<int32_t>(TokenType::Unknown);
    std::string piece;
    put_bytes(piece, field::kPiece, data.tokens[i]);
    put_float(piece, field::kScore, data.scores.empty() ? 0.0f : data.scores[i]);
    put_int(piece, field::kType, type);
    put_bytes(proto, field::kPieces, piece);
  }
  KILN_CHECK(has_unknown, "the SentencePiece vocabulary has no unknown token (type 2): the model file is damaged");

  auto piece_or = [&](int32_t id, const char* fallback) {
    return id >= 0 && static_cast<size_t>(id) < n ? data.tokens[id] : std::string(fallback);
  };
  std::string trainer;
  put_int(trainer, field::kModelType, kModelTypeBpe);
  put_int(trainer, field::kVocabSize, static_cast<int64_t>(n));
  put_int(trainer, field::kByteFallback, has_bytes ? 1 : 0);
  put_int(trainer, field::kUnkId, data.unk_id);
  put_int(trainer, field::kBosId, data.bos_id);
  put_int(trainer, field::kEosId, data.eos_id);
  put_int(trainer, field::kPadId, data.pad_id);
  put_bytes(trainer, field::kUnkPiece, piece_or(data.unk_id, "<unk>"));
  put_bytes(trainer, field::kBosPiece, piece_or(data.bos_id, "<s>"));
  put_bytes(trainer, field::kEosPiece, piece_or(data.eos_id, "</s>"));
  put_bytes(proto, field::kTrainerSpec, trainer);

  std::string normalizer;
  put_bytes(normalizer, field::kName, "identity");
  put_int(normalizer, field::kAddDummyPrefix, data.add_space_prefix ? 1 : 0);
  put_int(normalizer, field::kRemoveExtraWhitespaces, 0);
  put_int(normalizer, field::kEscapeWhitespaces, 1);
  put_bytes(proto, field::kNormalizerSpec, normalizer);
  return proto;
}

}  // namespace kiln
