// The GGUF reader: header, metadata values and arrays, tensor infos; every typed getter; dequantizing
// the small tensors; and the GGUF -> .kiln mapping (config, tokenizer, tensor list) without writing.
#include <vector>

#include "convert/from_gguf.h"
#include "convert/gguf_reader.h"
#include "engine/error.h"
#include "tests/fuzz/fuzz_conversion.h"
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

namespace {

constexpr uint64_t kMaxDequantized = uint64_t(1) << 16;  // values: keeps one input fast

void read_every_value(const kiln::GgufFile& gguf) {
  for (const auto& [key, value] : gguf.metadata()) {
    // Each getter either returns or refuses the type; none may do anything else.
    try { (void)gguf.get_string(key); } catch (const kiln::Error&) {}
    try { (void)gguf.get_int(key); } catch (const kiln::Error&) {}
    try { (void)gguf.get_float(key); } catch (const kiln::Error&) {}
    try { (void)gguf.get_bool(key); } catch (const kiln::Error&) {}
    try { (void)gguf.get_string_array(key); } catch (const kiln::Error&) {}
    try { (void)gguf.get_float_array(key); } catch (const kiln::Error&) {}
    try { (void)gguf.get_int_array(key); } catch (const kiln::Error&) {}
  }
}

void dequantize_small_tensors(const kiln::GgufFile& gguf) {
  std::vector<float> out;
  for (const kiln::GgufTensor& t : gguf.tensors()) {
    if (t.numel > kMaxDequantized) continue;
    out.assign(t.numel, 0.0f);
    try {
      gguf.dequantize(t, out.data());
      if (t.n_rows() > 1) gguf.dequantize_rows(t, 1, t.n_rows() - 1, out.data());
    } catch (const kiln::Error&) {
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const kiln::fuzz::MemoryFile input(data, size);
  try {
    const kiln::GgufFile gguf = kiln::GgufFile::open(input.path());
    read_every_value(gguf);
    dequantize_small_tensors(gguf);
    try {
      const kiln::TokenizerData tokenizer = kiln::tokenizer_from_gguf(gguf);
      const auto tok = kiln::make_tokenizer(tokenizer);
      (void)tok->decode(tok->encode("Hello, world!\n<s> [INST]"));
    } catch (const kiln::Error&) {
    }
    kiln::fuzz::check_and_read_small_tensors(kiln::conversion_from_gguf(gguf));
  } catch (const kiln::Error&) {
  }
  return 0;
}
