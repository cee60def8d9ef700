// The .kiln loader end to end: header, metadata JSON (model config and tokenizer), tensor table, weight
// binding, the tokenizer built from the file, and one short forward pass on the CPU backend.
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/backend.h"
#include "engine/checksum.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "engine/kiln_format.h"
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

namespace {

bool fits(uint64_t offset, uint64_t bytes, uint64_t limit) { return offset <= limit && bytes <= limit - offset; }

// Makes the header's file size and checksum agree with the bytes, so that mutations reach the metadata and
// the tensor table instead of stopping at the checksum (whose check the unit tests cover).
void fix_up_header(std::vector<uint8_t>& bytes) {
  if (bytes.size() < sizeof(kiln::FileHeader)) return;
  kiln::FileHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  h.file_bytes = bytes.size();
  if (!fits(h.metadata_offset, h.metadata_bytes, bytes.size()) || !fits(h.table_offset, h.table_bytes, bytes.size()))
    return;
  h.header_checksum = 0;
  uint32_t crc = kiln::crc32c(&h, sizeof h);
  crc = kiln::crc32c(bytes.data() + h.metadata_offset, h.metadata_bytes, crc);
  crc = kiln::crc32c(bytes.data() + h.table_offset, h.table_bytes, crc);
  h.header_checksum = crc;
  std::memcpy(bytes.data(), &h, sizeof h);
}

void exercise(const kiln::KilnFile& file) {
  (void)file.verify();
  const kiln::TokenizerData data = file.tokenizer_data();
  const auto tokenizer = kiln::make_tokenizer(data);
  std::vector<int32_t> ids = tokenizer->encode("Hello, world! <|im_start|> \xF0\x9F\x99\x82", true);
  (void)tokenizer->decode(ids);

  kiln::BackendOptions options;
  options.n_ctx = 8;
  options.n_threads = 1;
  options.max_batch = 4;
  const auto backend = kiln::make_cpu_backend(file, options);
  const int64_t width = file.config().output_width();
  ids.resize(std::min<size_t>(ids.size(), 5));
  for (int32_t& id : ids) id = int32_t(uint32_t(id) % uint32_t(file.config().n_vocab));
  if (ids.empty()) ids.push_back(0);
  std::vector<float> out(ids.size() * size_t(width));
  // An encoder needs its whole input in one call and returns every row; a decoder the last row.
  backend->forward(ids.data(), int64_t(ids.size()), 0, out.data(), !file.config().lm_head);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> bytes(data, data + size);
  fix_up_header(bytes);
  const kiln::fuzz::MemoryFile input(bytes.data(), bytes.size());
  try {
    const kiln::KilnFile file = kiln::KilnFile::open(input.path());
    exercise(file);
  } catch (const kiln::Error&) {
  }
  return 0;
}
