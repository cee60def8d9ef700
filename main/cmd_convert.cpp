// kiln convert: GGUF file or Hugging Face folder -> .kiln file.
#include "main/cli.h"
#include "main/commands.h"
#include "engine/error.h"

namespace kiln {

int cmd_convert(int, char**) { fail("convert is not built yet"); }

}  // namespace kiln
