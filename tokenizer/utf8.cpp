#include "tokenizer/utf8.h"

namespace kiln {

namespace {

// Allowed range of the second byte for each lead byte (Unicode table 3-7); later bytes are 80..BF.
struct LeadInfo {
  uint8_t n_bytes;  // 0 = not a lead byte
  uint8_t lo, hi;   // second byte range
};

LeadInfo lead_info(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b >= 0xE1 && b <= 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

}  // namespace

Utf8Char utf8_decode(std::string_view text, size_t pos) {
  const auto b0 = static_cast<uint8_t>(text[pos]);
  const LeadInfo info = lead_info(b0);
  if (info.n_bytes == 1) return {Utf8Status::Ok, b0, 1};
  if (info.n_bytes == 0) return {Utf8Status::Invalid, 0, 1};
  uint32_t cp = b0 & (0x7F >> info.n_bytes);
  for (size_t k = 1; k < info.n_bytes; ++k) {
    if (pos + k >= text.size()) return {Utf8Status::Truncated, 0, k};
    const auto b = static_cast<uint8_t>(text[pos + k]);
    const uint8_t lo = k == 1 ? info.lo : 0x80, hi = k == 1 ? info.hi : 0xBF;
    if (b < lo || b > hi) return {Utf8Status::Invalid, 0, k};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {Utf8Status::Ok, cp, info.n_bytes};
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string utf8_sanitize(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const Utf8Char c = utf8_decode(text, pos);
    if (c.status == Utf8Status::Ok) {
      out.append(text.substr(pos, c.length));
    } else {
      out += "\xEF\xBF\xBD";
    }
    pos += c.length;
  }
  return out;
}

bool utf8_is_valid(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    const Utf8Char c = utf8_decode(text, pos);
    if (c.status != Utf8Status::Ok) return false;
    pos += c.length;
  }
  return true;
}

}  // namespace kiln
