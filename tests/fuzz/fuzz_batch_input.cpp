// kiln batch's input: any bytes become one item per line, each a request or an error; nothing may
// throw, since a bad line must still get its own error record.
#include <algorithm>
#include <string_view>

#include "main/batch_input.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  const kiln::BatchInput input = kiln::parse_batch_input(text);  // an exception escaping is a finding

  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  const size_t n_lines = size_t(std::count(text.begin(), text.end(), '\n')) + (!text.empty() && text.back() != '\n');
  KILN_FUZZ_ASSERT(input.items.size() == n_lines);
  for (size_t i = 0; i < input.items.size(); ++i) {
    const kiln::BatchItem& item = input.items[i];
    KILN_FUZZ_ASSERT(item.line == int64_t(i) + 1);
    KILN_FUZZ_ASSERT(item.runnable() == item.error_code.empty());
    if (!item.runnable()) continue;
    KILN_FUZZ_ASSERT(!item.id.is_null());
    KILN_FUZZ_ASSERT(item.chat ? !item.messages.empty() : item.messages.empty());
    (void)kiln::id_key(item.id);
  }
  return 0;
}
