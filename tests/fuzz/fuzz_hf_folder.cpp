// A Hugging Face folder: config.json (every family's mapping), tokenizer.json, tokenizer_config.json and
// model.safetensors, read into a conversion, its tokenizer built and its small tensors read.
// Input: the four files in that order, separated by kSeparator; an empty part is an absent file.
#include <vector>

#include "convert/from_hf.h"
#include "convert/hf_folder.h"
#include "engine/error.h"
#include "tests/fuzz/fuzz_conversion.h"
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

namespace {

constexpr std::string_view kSeparator = "\n=====\n";
constexpr const char* kFiles[] = {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const kiln::fuzz::ScratchFolder folder;
  folder.clear();
  const std::vector<std::string> parts = kiln::fuzz::split_parts(data, size, kSeparator, std::size(kFiles));
  for (size_t i = 0; i < parts.size(); ++i)
    if (!parts[i].empty()) folder.write(kFiles[i], parts[i]);
  try {
    const kiln::HfFolder hf = kiln::HfFolder::open(folder.path().string());
    try {
      const auto tokenizer = kiln::make_tokenizer(kiln::tokenizer_from_hf(hf));
      (void)tokenizer->decode(tokenizer->encode("Hello, world! [CLS] <|im_end|>"));
    } catch (const kiln::Error&) {
    }
    kiln::fuzz::check_and_read_small_tensors(kiln::conversion_from_hf(hf));
  } catch (const kiln::Error&) {
  }
  return 0;
}
