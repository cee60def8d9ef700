// Test helper: loads a tiny Hugging Face model fixture (tests/data/tiny_<name>/, made by
// make_tiny_models.py), maps its tensors to .kiln names (Llama, Mistral, Qwen2, GPT-2, GPT-NeoX, GPT-J,
// BLOOM, OPT, BERT: q/k/v fused into attn_qkv in Q, K, V row order, gate/up into ffn_up, GPT-2's [in, out]
// matrices transposed), stores the matrices in any weight dtype with a naive quantizer, and reads the
// reference logits (hidden states for BERT).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "engine/backend.h"
#include "engine/model_config.h"
#include "engine/tensor.h"
#include "engine/weights.h"

namespace kiln::test {

struct FloatTensor {
  std::vector<int64_t> shape;  // outermost first
  std::vector<float> values;
};

struct TinyModel {
  ModelConfig config;
  std::map<std::string, FloatTensor> tensors;  // by .kiln name, f32
};

// Throws kiln::Error when the fixture is missing or malformed.
TinyModel load_tiny_model(const std::string& name);

// Owns the tensors of a TinyModel in one storage dtype (matrices only; 1-D tensors stay f32) and hands out
// views. int8 is symmetric with one fp16 scale per group along a row, as docs/FORMAT.md specifies; a
// group is max_group_size values, halved until it divides the row.
class TensorStore {
 public:
  TensorStore(const TinyModel& model, DType matrix_dtype, uint32_t max_group_size = 32);
  TensorStore(const TensorStore&) = delete;
  TensorStore& operator=(const TensorStore&) = delete;

  const TensorView* find(std::string_view name) const;
  TensorLookup lookup() const {
    return [this](std::string_view name) { return find(name); };
  }
  // Drops a tensor or replaces its view, to test the binder's checks.
  void erase(const std::string& name) { views_.erase(name); }
  TensorView& view(const std::string& name) { return views_.at(name); }

 private:
  std::deque<std::vector<uint8_t>> storage_;  // a deque never moves what it holds
  std::map<std::string, TensorView, std::less<>> views_;
};

struct PromptReference {
  std::vector<int32_t> tokens;     // [n]
  std::vector<int32_t> positions;  // [m] positions whose full logits are kept
  std::vector<float> logits;       // [m, n_vocab]
  std::vector<float> max;          // [n] largest logit per position
  std::vector<int32_t> argmax;     // [n]
  std::vector<float> logsumexp;    // [n]
};

std::vector<PromptReference> load_reference(const std::string& name);
// The first n tokens (or all, if fewer) of the longest reference prompt.
std::vector<int32_t> prompt_prefix(const std::vector<PromptReference>& refs, size_t n);

// An encoder's reference (no LM head): the last hidden state at every position.
struct HiddenReference {
  std::vector<int32_t> tokens;  // [n]
  std::vector<float> hidden;    // [n, dim]
};

std::vector<HiddenReference> load_hidden_reference(const std::string& name);

// A Llama-family model of the config's shapes (fused QKV, gate rows then up rows, an untied head): its
// matrices normal(0, 0.02) draws from rng in a fixed order, its norms ones.
TinyModel random_llama(const ModelConfig& config, std::mt19937& rng);

// The options the tiny models' backend tests share: 512 positions, 2 threads, max_batch tokens a step.
BackendOptions tiny_backend_options(int64_t max_batch = 512);

// Every position's output (logits, or an encoder's hidden states) for tokens run from position 0.
std::vector<float> forward_all(Backend& backend, const std::vector<int32_t>& tokens);

// The largest |logit - reference| over the positions whose full logits the reference keeps; logits:
// [ref.tokens.size(), n_vocab], a forward over ref.tokens from position 0.
float kept_logit_error(const PromptReference& ref, const std::vector<float>& logits, int64_t n_vocab);

// The largest |a - b| over the elements; infinity when the sizes differ.
float max_abs_difference(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace kiln::test
