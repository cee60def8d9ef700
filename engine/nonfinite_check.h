// NaN or infinite logits mean a broken model file or a kernel bug, never a token to sample: the step
// stops with NonFiniteLogits, and the caller, who holds the model file, re-runs the same tokens with the
// backend's tensor hook to name the first layer and stage whose output went non-finite.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/error.h"

namespace kiln {

class KilnFile;

// The index of the first NaN or infinity in data[0, n), or -1 when every value is finite.
[[nodiscard]] int64_t first_nonfinite(const float* data, int64_t n);  // data: [n]

// Thrown when a forward step's logits are not all finite; tokens are what the cache held after the step
// (positions 0..), so running them again from an empty cache repeats it.
class NonFiniteLogits : public Error {
 public:
  NonFiniteLogits(const std::string& message, std::vector<int32_t> tokens)
      : Error(message), tokens_(std::move(tokens)) {}
  const std::vector<int32_t>& tokens() const { return tokens_; }

 private:
  std::vector<int32_t> tokens_;
};

// Throws NonFiniteLogits when logits holds a NaN or infinity. tokens: [n_past] after the step.
void check_logits_finite(std::span<const float> logits, std::span<const int32_t> tokens);
// The same for a step that returned only its best logits (Backend::forward_top): first_invalid is the
// row's first NaN or +inf logit, or -1 (a -inf masks a token there, as the sampler takes it).
void check_top_logits_valid(int32_t first_invalid, std::span<const int32_t> tokens);

// Where a non-finite value first appeared: a named intermediate (see TensorCallback) and its layer (-1:
// outside the layers).
struct NonFiniteSite {
  std::string tensor;
  int layer = -1;
};

// Runs tokens from position 0 through a fresh CPU backend with the tensor hook; nullopt when every
// intermediate and the logits stay finite there.
[[nodiscard]] std::optional<NonFiniteSite> locate_nonfinite(const KilnFile& file, std::span<const int32_t> tokens,
                                                            int n_threads);

// Rethrows error as a kiln::Error whose message also says where the first non-finite value appeared
// (or that the CPU backend computes finite values, when the step ran on another backend).
[[noreturn]] void fail_nonfinite(const KilnFile& file, const NonFiniteLogits& error, int n_threads);

}  // namespace kiln
