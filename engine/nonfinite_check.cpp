#include "engine/nonfinite_check.h"

#include <cmath>

#include "engine/backend.h"
#include "engine/kiln_file.h"

namespace kiln {

int64_t first_nonfinite(const float* data, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(data[i])) return i;
  return -1;
}

namespace {

[[noreturn]] void throw_nonfinite(int64_t at, std::string_view value, std::span<const int32_t> tokens) {
  throw NonFiniteLogits(
      fmt::format("the logits after {} tokens are not finite (token {} has {})", tokens.size(), at, value),
      std::vector<int32_t>(tokens.begin(), tokens.end()));
}

}  // namespace

void check_logits_finite(std::span<const float> logits, std::span<const int32_t> tokens) {
  const int64_t at = first_nonfinite(logits.data(), int64_t(logits.size()));
  if (at >= 0) throw_nonfinite(at, fmt::format("{}", logits[size_t(at)]), tokens);
}

void check_top_logits_valid(int32_t first_invalid, std::span<const int32_t> tokens) {
  if (first_invalid >= 0) throw_nonfinite(first_invalid, "nan or +inf", tokens);
}

std::optional<NonFiniteSite> locate_nonfinite(const KilnFile& file, std::span<const int32_t> tokens, int n_threads) {
  KILN_CHECK(!tokens.empty(), "there are no tokens to run again");
  std::optional<NonFiniteSite> site;
  BackendOptions options;
  options.n_ctx = int64_t(tokens.size());
  options.n_threads = n_threads;
  options.on_tensor = [&site](std::string_view name, int layer, const float* data, int64_t n) {
    if (!site && first_nonfinite(data, n) >= 0) site = NonFiniteSite{std::string(name), layer};
  };
  const auto backend = make_cpu_backend(file, options);
  std::vector<float> logits(size_t(file.config().output_width()));
  backend->forward(tokens.data(), int64_t(tokens.size()), 0, logits.data(), false);
  if (!site && first_nonfinite(logits.data(), int64_t(logits.size())) >= 0) site = NonFiniteSite{"logits", -1};
  return site;
}

void fail_nonfinite(const KilnFile& file, const NonFiniteLogits& error, int n_threads) {
  const std::optional<NonFiniteSite> site = locate_nonfinite(file, error.tokens(), n_threads);
  if (!site) {
    fail("{}; the CPU backend computes finite values for the same tokens, so the fault is in the backend that "
         "ran them: try --device cpu",
         error.what());
  }
  const std::string where = site->layer >= 0 ? fmt::format("'{}' of layer {}", site->tensor, site->layer)
                                             : fmt::format("'{}'", site->tensor);
  fail("{}: the first non-finite value appears in {}; the model file's weights there are damaged or overflow "
       "(`kiln verify` checks the file against its checksums)",
       error.what(), where);
}

}  // namespace kiln
