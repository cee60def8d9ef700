// Rotary position embedding applied in place to the first rotary_dim values of every head.
#pragma once

#include <cstdint>
#include <vector>

namespace kiln {

enum class RotaryMode {
  RotateHalf,     // pairs (i, i + rotary_dim/2): HF llama, GPT-NeoX
  RotateEveryTwo  // pairs (2i, 2i + 1): GPT-J, GGUF llama files
};

struct RotaryParams {
  RotaryMode mode = RotaryMode::RotateHalf;
  int rotary_dim = 0;         // even, <= head_dim
  float theta = 10000.0f;     // base
  float position_scale = 1;   // linear scaling: angle uses position / position_scale
};

// Pair i of a head at position p turns by p / position_scale * theta^(-2i / rotary_dim) radians; the
// angle, its cosine and sine are computed in double and rounded once.

// cos and sin of every (position, pair) for positions [0, n_positions), made once per model so a call
// costs no trigonometry; rotary() computes positions the table does not cover itself.
class RotaryTable {
 public:
  RotaryTable(const RotaryParams& params, int64_t n_positions);
  const RotaryParams& params() const { return params_; }
  int64_t n_positions() const { return n_positions_; }
  const float* cos(int64_t position) const { return values_.data() + position * params_.rotary_dim; }
  const float* sin(int64_t position) const { return cos(position) + params_.rotary_dim / 2; }

 private:
  RotaryParams params_;
  int64_t n_positions_;
  std::vector<float> values_;  // [n_positions, 2, rotary_dim / 2]: cos then sin
};

// x: [n_tokens, n_heads, head_dim] · positions: [n_tokens] (>= 0) · table: nullptr, or one made with
// the same params.
void rotary(float* x, const int32_t* positions, int64_t n_tokens, int n_heads, int head_dim,
            const RotaryParams& params, const RotaryTable* table = nullptr);
void rotary_reference(float* x, const int32_t* positions, int64_t n_tokens, int n_heads, int head_dim,
                      const RotaryParams& params);

}  // namespace kiln
