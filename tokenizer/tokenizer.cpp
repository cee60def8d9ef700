#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "engine/error.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/spm_tokenizer.h"
#include "tokenizer/wordpiece_tokenizer.h"
#include "tokenizer/utf8.h"

namespace kiln {

Tokenizer::Tokenizer(const TokenizerData& data)
    : bos_id_(data.bos_id), eos_id_(data.eos_id), pad_id_(data.pad_id), unk_id_(data.unk_id),
      add_bos_(data.add_bos) {
  eog_ids_ = data.eos_ids;
  if (data.eos_id >= 0 && std::find(eog_ids_.begin(), eog_ids_.end(), data.eos_id) == eog_ids_.end()) {
    eog_ids_.insert(eog_ids_.begin(), data.eos_id);
  }
  if (!data.tokens.empty()) set_pieces(data.tokens, data.token_types);
}

void Tokenizer::set_pieces(std::vector<std::string> pieces, std::vector<int32_t> types) {
  KILN_CHECK(!pieces.empty(), "the tokenizer has no tokens: the model file is incomplete, convert it again");
  KILN_CHECK(types.empty() || types.size() == pieces.size(),
             "the tokenizer has {} tokens but {} token types: the model file is inconsistent",
             pieces.size(), types.size());
  KILN_CHECK(pieces.size() < static_cast<size_t>(INT32_MAX), "the tokenizer has too many tokens ({})",
             pieces.size());
  pieces_ = std::move(pieces);
  types_ = std::move(types);
  const auto n = static_cast<int32_t>(pieces_.size());
  for (int32_t id : {bos_id_, eos_id_, pad_id_, unk_id_}) {
    KILN_CHECK(id >= -1 && id < n, "special token id {} is outside the vocabulary of {} tokens", id, n);
  }
  for (int32_t id : eog_ids_) {
    KILN_CHECK(id >= 0 && id < n, "end-of-turn id {} is outside the vocabulary of {} tokens", id, n);
  }
  piece_ids_.clear();
  piece_ids_.reserve(pieces_.size());
  for (int32_t id = 0; id < n; ++id) piece_ids_.emplace(pieces_[id], id);  // first id wins
  index_specials();
}

TokenType Tokenizer::token_type(int32_t id) const {
  return types_.empty() ? TokenType::Normal : static_cast<TokenType>(types_[id]);
}

bool Tokenizer::is_special(int32_t id) const {
  if (id < 0 || id >= n_vocab()) return false;
  const TokenType t = token_type(id);
  return t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown;
}

bool Tokenizer::is_eog(int32_t id) const {
  return std::find(eog_ids_.begin(), eog_ids_.end(), id) != eog_ids_.end();
}

void Tokenizer::index_specials() {
  specials_by_first_byte_.assign(256, {});
  for (int32_t id = 0; id < n_vocab(); ++id) {
    if (!is_special(id) || pieces_[id].empty()) continue;
    specials_by_first_byte_[static_cast<uint8_t>(pieces_[id][0])].push_back(id);
  }
  for (auto& ids : specials_by_first_byte_) {
    std::stable_sort(ids.begin(), ids.end(),
                     [&](int32_t a, int32_t b) { return pieces_[a].size() > pieces_[b].size(); });
  }
}

size_t Tokenizer::match_special(std::string_view text, size_t pos, int32_t* id) const {
  for (int32_t candidate : specials_by_first_byte_[static_cast<uint8_t>(text[pos])]) {
    const std::string& piece = pieces_[candidate];
    if (text.substr(pos, piece.size()) == piece) {
      *id = candidate;
      return piece.size();
    }
  }
  return 0;
}

std::vector<int32_t> Tokenizer::encode(std::string_view raw, bool add_bos, bool parse_special) const {
  std::vector<int32_t> out;
  if (add_bos && add_bos_ && bos_id_ >= 0) out.push_back(bos_id_);
  const std::string text = utf8_sanitize(raw);
  std::string_view rest(text);
  if (!parse_special) {
    encode_text(rest, out);
    return out;
  }
  // Specials are cut out first; the text between them is encoded on its own, as the reference does.
  size_t start = 0;
  for (size_t pos = 0; pos < rest.size();) {
    int32_t id = -1;
    const size_t len = match_special(rest, pos, &id);
    if (len == 0) {
      ++pos;
      continue;
    }
    if (pos > start) encode_text(rest.substr(start, pos - start), out);
    out.push_back(id);
    pos += len;
    start = pos;
  }
  if (start < rest.size()) encode_text(rest.substr(start), out);
  return out;
}

void Tokenizer::check_id(int32_t id) const {
  KILN_CHECK(id >= 0 && id < n_vocab(), "token id {} is outside the vocabulary (0..{})", id, n_vocab() - 1);
}

std::string Tokenizer::token_bytes(int32_t id) const {
  check_id(id);
  if (is_special(id)) return pieces_[id];
  return normal_token_bytes(id);
}

const std::string& Tokenizer::token_to_piece(int32_t id) const {
  check_id(id);
  return pieces_[id];
}

int32_t Tokenizer::piece_to_id(std::string_view piece) const {
  const auto it = piece_ids_.find(std::string(piece));
  return it == piece_ids_.end() ? -1 : it->second;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (skip_special && is_special(id)) continue;
    out += token_bytes(id);
  }
  if (strip_leading_space_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerData& data) {
  switch (data.kind) {
    case TokenizerKind::BytePairGpt2:
      return make_bpe_tokenizer(data);
    case TokenizerKind::SentencePiece:
      return make_spm_tokenizer(data);
    case TokenizerKind::WordPiece:
      return make_wordpiece_tokenizer(data);
  }
  fail("this model's tokenizer kind ({}) is unknown: convert the model again", int(data.kind));
}

std::string StreamDecoder::push(int32_t id) {
  if (skip_special_ && tokenizer_.is_special(id)) return {};
  std::string bytes = tokenizer_.token_bytes(id);
  if (!started_ && !bytes.empty()) {
    started_ = true;
    if (tokenizer_.strips_leading_space() && bytes[0] == ' ') bytes.erase(0, 1);
  }
  pending_ += bytes;
  // Emit every complete or hopeless sequence; hold back a tail that later bytes could complete.
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const Utf8Char c = utf8_decode(pending_, pos);
    if (c.status == Utf8Status::Truncated) break;
    if (c.status == Utf8Status::Ok) {
      out.append(pending_, pos, c.length);
    } else {
      out += "\xEF\xBF\xBD";
    }
    pos += c.length;
  }
  pending_.erase(0, pos);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = utf8_sanitize(pending_);
  pending_.clear();
  return out;
}

}  // namespace kiln
