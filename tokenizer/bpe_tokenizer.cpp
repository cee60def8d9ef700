#include "tokenizer/bpe_tokenizer.h"

#include <array>
#include <algorithm>
#include <functional>

#include "engine/error.h"
#include "tokenizer/pre_tokenize.h"
#include "tokenizer/utf8.h"

namespace kiln {

namespace {

// Printable bytes stand for themselves; the other 68 take code points from 256 up, in byte order.
std::array<uint32_t, 256> make_byte_map() {
  std::array<uint32_t, 256> map{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    map[b] = printable ? b : next++;
  }
  return map;
}

const std::array<uint32_t, 256>& byte_map() {
  static const std::array<uint32_t, 256> map = make_byte_map();
  return map;
}

struct MergeInfo {
  int32_t rank;
  int32_t merged_id;
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// (left id, right id) -> merge, open addressing: the lookup is the hot loop of encoding, and a
// node-based map spends most of it chasing pointers.
class MergeTable {
 public:
  void reserve(size_t n) {
    size_t capacity = 16;
    while (capacity < 2 * n) capacity *= 2;
    slots_.assign(capacity, Slot{kEmpty, {}});
    mask_ = capacity - 1;
  }
  // Keeps the first merge for a pair (the lower rank).
  void insert(uint64_t key, MergeInfo info) {
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return;
      if (slots_[i].key == kEmpty) {
        slots_[i] = {key, info};
        return;
      }
    }
  }
  const MergeInfo* find(uint64_t key) const {
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i].info;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are >= 0, so no real pair has this key
  struct Slot {
    uint64_t key;
    MergeInfo info;
  };
  size_t slot(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 17) & mask_; }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const TokenizerData& data)
      : Tokenizer(data), pre_(pre_tokenizer_from_name(data.pre_tokenizer)),
        // Llama 3's tokenizer emits a piece that is already a token whole, without merging.
        ignore_merges_(pre_ == PreTokenizer::Llama3) {
    const auto& map = byte_map();
    for (uint32_t b = 0; b < 256; ++b) {
      std::string ch;
      utf8_append(ch, map[b]);
      byte_ids_[b] = piece_to_id(ch);
      unicode_to_byte_.emplace(map[b], static_cast<uint8_t>(b));
    }
    merges_.reserve(data.merges.size());
    KILN_CHECK(data.merges.size() < static_cast<size_t>(INT32_MAX), "too many BPE merges ({})", data.merges.size());
    for (size_t rank = 0; rank < data.merges.size(); ++rank) {
      const std::string& merge = data.merges[rank];
      const size_t space = merge.find(' ');
      KILN_CHECK(space != std::string::npos && space > 0 && space + 1 < merge.size(),
                 "BPE merge {} ('{}') is not two tokens separated by a space: the model file is damaged",
                 rank, merge);
      const int32_t left = piece_to_id(std::string_view(merge).substr(0, space));
      const int32_t right = piece_to_id(std::string_view(merge).substr(space + 1));
      const int32_t merged = piece_to_id(merge.substr(0, space) + merge.substr(space + 1));
      // A merge whose parts or result are not tokens can never apply; the reference skips it too.
      if (left < 0 || right < 0 || merged < 0) continue;
      merges_.insert(pair_key(left, right), MergeInfo{static_cast<int32_t>(rank), merged});
    }
  }

 protected:
  void encode_text(std::string_view text, std::vector<int32_t>& out) const override {
    std::vector<PieceSpan> spans;
    pre_tokenize(pre_, text, spans);
    Scratch scratch;
    // Words repeat: each distinct piece of this text is merged once (the cache lives for this call
    // only, so concurrent encodes share nothing).
    std::unordered_map<std::string_view, std::pair<size_t, size_t>> seen;  // piece -> [begin, end) of pool
    std::vector<int32_t> pool;
    for (const PieceSpan& span : spans) {
      const std::string_view piece = text.substr(span.begin, span.end - span.begin);
      if (const auto it = seen.find(piece); it != seen.end()) {
        out.insert(out.end(), pool.begin() + it->second.first, pool.begin() + it->second.second);
        continue;
      }
      const size_t first = out.size();
      encode_piece(piece, scratch, out);
      seen.emplace(piece, std::make_pair(pool.size(), pool.size() + (out.size() - first)));
      pool.insert(pool.end(), out.begin() + first, out.end());
    }
  }

  std::string normal_token_bytes(int32_t id) const override {
    const std::string& piece = pieces()[id];
    std::string out;
    size_t pos = 0;
    while (pos < piece.size()) {
      const Utf8Char c = utf8_decode(piece, pos);
      const auto it = c.status == Utf8Status::Ok ? unicode_to_byte_.find(c.code_point) : unicode_to_byte_.end();
      if (it != unicode_to_byte_.end()) {
        out += static_cast<char>(it->second);
      } else {
        out.append(piece, pos, c.length);  // not a byte character: keep it as written
      }
      pos += c.length;
    }
    return out;
  }

 private:
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // neighbours in the piece, -1 at the ends
    bool alive;
  };
  struct Candidate {
    int32_t rank, pos, merged_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  // Buffers reused across the pieces of one text.
  struct Scratch {
    std::string mapped;
    std::vector<Symbol> symbols;
    std::vector<Candidate> heap;  // min-heap on (rank, pos)
  };

  void push_candidate(const std::vector<Symbol>& symbols, int32_t pos, std::vector<Candidate>& heap) const {
    if (pos < 0 || symbols[pos].next < 0) return;
    if (const MergeInfo* m = merges_.find(pair_key(symbols[pos].id, symbols[symbols[pos].next].id))) {
      heap.push_back({m->rank, pos, m->merged_id});
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  }

  // Merges one piece: lowest rank first, leftmost among equal ranks, as the reference does.
  void encode_piece(std::string_view piece, Scratch& scratch, std::vector<int32_t>& out) const {
    if (ignore_merges_) {
      scratch.mapped.clear();
      for (char b : piece) utf8_append(scratch.mapped, byte_map()[static_cast<uint8_t>(b)]);
      const int32_t whole = piece_to_id(scratch.mapped);
      if (whole >= 0) {
        out.push_back(whole);
        return;
      }
    }
    std::vector<Symbol>& symbols = scratch.symbols;
    std::vector<Candidate>& heap = scratch.heap;
    symbols.clear();
    heap.clear();
    for (char b : piece) {
      const int32_t id = byte_ids_[static_cast<uint8_t>(b)];
      // A byte the vocabulary lacks is dropped: these models have no unknown token for BPE.
      if (id < 0) continue;
      const auto n = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, n - 1, -1, true});
      if (n > 0) symbols[n - 1].next = n;
    }
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_candidate(symbols, i, heap);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>());
      const Candidate top = heap.back();
      heap.pop_back();
      Symbol& left = symbols[top.pos];
      if (!left.alive || left.next < 0) continue;
      // Stale when either side changed since the candidate was queued.
      const MergeInfo* m = merges_.find(pair_key(left.id, symbols[left.next].id));
      if (m == nullptr || m->merged_id != top.merged_id) continue;
      Symbol& right = symbols[left.next];
      left.id = top.merged_id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = top.pos;
      push_candidate(symbols, left.prev, heap);
      push_candidate(symbols, top.pos, heap);
    }
    for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
  }

  PreTokenizer pre_;
  bool ignore_merges_;
  std::array<int32_t, 256> byte_ids_{};
  std::unordered_map<uint32_t, uint8_t> unicode_to_byte_;
  MergeTable merges_;
};

}  // namespace

uint32_t byte_to_unicode(uint8_t b) { return byte_map()[b]; }

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const TokenizerData& data) {
  KILN_CHECK(!data.tokens.empty(), "the BPE tokenizer has no tokens: convert the model again");
  return std::make_unique<BpeTokenizer>(data);
}

}  // namespace kiln
