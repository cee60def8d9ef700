// Helpers shared by the reader tests: fixture paths, a temporary folder, an error check, byte building and
// the header mutations of the fuzz-style tests.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "engine/error.h"

namespace kiln::test {

inline std::string data_path(const std::string& name) { return std::string(KILN_SOURCE_DIR) + "/tests/data/" + name; }

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::string& path, const uint8_t* data, size_t n) {
  // A new file rather than a truncated one: some file systems flush a truncated file on close, which
  // makes the thousands of mutated files the fuzz-style tests write slow.
  std::error_code ignored;
  std::filesystem::remove(path, ignored);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), std::streamsize(n));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

inline void write_text(const std::string& path, std::string_view text) {
  write_bytes(path, reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

// A fresh folder under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "kiln_readers_XXXXXX").string();
    const char* made = ::mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr) << "cannot make a temp dir";
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string write(const std::string& name, const std::vector<uint8_t>& bytes) const {
    write_bytes(file(name), bytes.data(), bytes.size());
    return file(name);
  }

 private:
  std::filesystem::path path_;
};

// Runs fn and expects a kiln::Error whose one-line message contains `needle`.
template <typename Fn>
void expect_error(Fn&& fn, std::string_view needle) {
  try {
    fn();
    ADD_FAILURE() << "expected a kiln::Error mentioning '" << needle << "', got none";
  } catch (const kiln::Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(needle), std::string::npos) << "message: " << message << "\nwanted: " << needle;
    EXPECT_EQ(message.find('\n'), std::string::npos) << "message is not one line: " << message;
  }
}

inline uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return bits;
}

// Little-endian byte building for hand-made GGUF and safetensors files.
struct Bytes {
  std::vector<uint8_t> data;
  Bytes& u8(uint8_t v) { return raw(&v, 1); }
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& u64(uint64_t v) { return raw(&v, 8); }
  Bytes& str(std::string_view s) { return u64(s.size()).raw(s.data(), s.size()); }
  Bytes& raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    data.insert(data.end(), b, b + n);
    return *this;
  }
  Bytes& zeros(size_t n) {
    data.resize(data.size() + n, 0);
    return *this;
  }
  Bytes& append(const Bytes& other) { return raw(other.data.data(), other.data.size()); }
};

// How many of the one-byte flips of the header (each byte of [0, header_end) xor-ed with each mask) `opens`
// refuses. Every mutated file goes through it, so one that crashes the reader fails the test.
template <typename Opens>
size_t refused_header_flips(const std::vector<uint8_t>& original, size_t header_end,
                            std::initializer_list<uint8_t> masks, Opens opens) {
  size_t refused = 0;
  for (size_t pos = 0; pos < header_end; ++pos) {
    for (const uint8_t mask : masks) {
      auto bytes = original;
      bytes[pos] ^= mask;
      refused += opens(bytes) ? 0 : 1;
    }
  }
  return refused;
}

// `rounds` copies of original, each with 1-4 header bytes overwritten by random bytes or by `specials`,
// through `opens` (whose answer does not matter: it must not crash).
template <typename Opens>
void open_random_header_overwrites(const std::vector<uint8_t>& original, size_t header_end, uint32_t seed, int rounds,
                                   std::initializer_list<uint8_t> specials, Opens opens) {
  std::mt19937 rng(seed);
  const std::vector<uint8_t> pool(specials);
  for (int round = 0; round < rounds; ++round) {
    auto bytes = original;
    const int n_writes = 1 + int(rng() % 4);
    for (int w = 0; w < n_writes; ++w) {
      const size_t pos = rng() % header_end;
      bytes[pos] = rng() % 2 ? uint8_t(rng()) : pool[rng() % pool.size()];
    }
    opens(bytes);
  }
}

}  // namespace kiln::test
