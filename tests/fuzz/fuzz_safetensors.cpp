// The safetensors reader: the header length, the JSON header (dtypes, shapes, data offsets) and the
// conversion of every small tensor to f32.
#include <vector>

#include "convert/safetensors_reader.h"
#include "engine/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const kiln::fuzz::MemoryFile input(data, size);
  try {
    const kiln::SafetensorsFile file = kiln::SafetensorsFile::open(input.path());
    std::vector<float> out;
    for (const kiln::SafetensorsTensor& t : file.tensors()) {
      KILN_FUZZ_ASSERT(file.find(t.name) == &t);
      KILN_FUZZ_ASSERT(t.offset + t.n_bytes <= size);
      if (t.numel > (uint64_t(1) << 16)) continue;
      out.assign(t.numel, 0.0f);
      try {
        file.read_f32(t, out.data());
      } catch (const kiln::Error&) {
      }
    }
  } catch (const kiln::Error&) {
  }
  return 0;
}
