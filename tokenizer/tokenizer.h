// One tokenizer interface over byte-level BPE and SentencePiece: text -> ids, ids -> text, and a
// streaming decoder that never emits half a UTF-8 character.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer_data.h"

namespace kiln {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text (any bytes: invalid UTF-8 is replaced by U+FFFD first) to ids. With parse_special, the
  // text of a special token (control, user-defined or unknown piece, e.g. "<|im_start|>") becomes
  // that token, longest match first, as Hugging Face tokenizers match added tokens. BOS is
  // prepended when add_bos and the model asks for it.
  [[nodiscard]] std::vector<int32_t> encode(std::string_view text, bool add_bos = true,
                                            bool parse_special = true) const;

  // Ids to the bytes they stand for. The result can end inside a UTF-8 character when the ids do;
  // special tokens appear as their text unless skip_special. Throws on an id out of range.
  [[nodiscard]] std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // The bytes one token stands for, before any whole-sequence clean-up (SentencePiece's first space).
  [[nodiscard]] std::string token_bytes(int32_t id) const;
  // The stored piece ("Ġthe", "▁the", "<0x0A>", "<|im_end|>").
  [[nodiscard]] const std::string& token_to_piece(int32_t id) const;
  // The id of a stored piece, or -1.
  [[nodiscard]] int32_t piece_to_id(std::string_view piece) const;

  [[nodiscard]] int32_t n_vocab() const { return static_cast<int32_t>(pieces_.size()); }
  [[nodiscard]] int32_t bos_id() const { return bos_id_; }
  [[nodiscard]] int32_t eos_id() const { return eos_id_; }
  [[nodiscard]] int32_t pad_id() const { return pad_id_; }
  [[nodiscard]] int32_t unk_id() const { return unk_id_; }
  [[nodiscard]] bool adds_bos() const { return add_bos_; }
  // True for every id that ends a turn (EOS and the chat end-of-turn tokens).
  [[nodiscard]] bool is_eog(int32_t id) const;
  // Control, user-defined and unknown pieces.
  [[nodiscard]] bool is_special(int32_t id) const;
  // SentencePiece models with a dummy prefix drop one leading space of the decoded text.
  [[nodiscard]] bool strips_leading_space() const { return strip_leading_space_; }

 protected:
  explicit Tokenizer(const TokenizerData& data);

  // Encodes valid UTF-8 text that holds no special token, appending to out.
  virtual void encode_text(std::string_view text, std::vector<int32_t>& out) const = 0;
  // The bytes of a non-special token.
  virtual std::string normal_token_bytes(int32_t id) const = 0;

  // For subclasses that learn the pieces only after loading a model.
  void set_pieces(std::vector<std::string> pieces, std::vector<int32_t> types);
  void set_strip_leading_space(bool on) { strip_leading_space_ = on; }

  [[nodiscard]] const std::vector<std::string>& pieces() const { return pieces_; }
  [[nodiscard]] TokenType token_type(int32_t id) const;

 private:
  void index_specials();
  void check_id(int32_t id) const;
  // Length of the longest special token matching text at pos, with its id in *id; 0 if none.
  size_t match_special(std::string_view text, size_t pos, int32_t* id) const;

  std::vector<std::string> pieces_;
  std::vector<int32_t> types_;
  std::unordered_map<std::string, int32_t> piece_ids_;
  std::vector<std::vector<int32_t>> specials_by_first_byte_;  // [256], ids longest first
  std::vector<int32_t> eog_ids_;
  int32_t bos_id_, eos_id_, pad_id_, unk_id_;
  bool add_bos_;
  bool strip_leading_space_ = false;
};

// Builds the tokenizer that data describes; throws kiln::Error when data is inconsistent.
[[nodiscard]] std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerData& data);

// Feeds generated ids one at a time and returns only whole UTF-8 characters; bytes that can never
// form a character come out as U+FFFD. The concatenated output equals
// utf8_sanitize(tokenizer.decode(ids, skip_special)).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}

  // The text that became complete with this token (often empty mid-character).
  [[nodiscard]] std::string push(int32_t id);
  // Whatever is still held back, as U+FFFD; call at the end of the stream.
  [[nodiscard]] std::string flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  bool started_ = false;
  std::string pending_;
};

}  // namespace kiln
