// The commit kiln was built from (the short git hash, or "unknown"), taken at build time rather than when
// the build was configured, so `kiln --version` and bench rows name what actually runs.
#pragma once

namespace kiln {

const char* build_commit();

}  // namespace kiln
