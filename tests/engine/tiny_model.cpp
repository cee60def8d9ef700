#include "tests/engine/tiny_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "convert/safetensors_reader.h"
#include "engine/error.h"
#include "engine/half.h"

namespace kiln::test {
namespace {

std::string fixture_dir(const std::string& name) { return std::string(KILN_SOURCE_DIR) + "/tests/data/tiny_" + name; }

FloatTensor read_tensor(const SafetensorsFile& file, const std::string& name) {
  const SafetensorsTensor& t = file.tensor(name);
  FloatTensor out;
  for (uint64_t d : t.shape) out.shape.push_back(int64_t(d));
  out.values.resize(t.numel);
  file.read_f32(t, out.values.data());
  return out;
}

// Stacks tensors along their first dim (rows of matrices, or vectors): the .kiln fused layouts.
FloatTensor concat(const std::vector<FloatTensor>& parts) {
  FloatTensor out = parts[0];
  for (size_t i = 1; i < parts.size(); ++i) {
    const FloatTensor& p = parts[i];
    KILN_CHECK(p.shape.size() == out.shape.size() && (p.shape.size() == 1 || p.shape[1] == out.shape[1]),
               "fused parts differ in shape");
    out.shape[0] += p.shape[0];
    out.values.insert(out.values.end(), p.values.begin(), p.values.end());
  }
  return out;
}

// A [in, out] matrix (GPT-2's Conv1D) as [out, in].
FloatTensor transpose(const FloatTensor& t) {
  const int64_t rows = t.shape[0], cols = t.shape[1];
  FloatTensor out{{cols, rows}, std::vector<float>(t.values.size())};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out.values[size_t(c * rows + r)] = t.values[size_t(r * cols + c)];
  return out;
}

// Rows (or vector entries) ordered [head][q, k, v][head_dim] (GPT-NeoX, BLOOM) reordered to all Q rows,
// then all K rows, then all V rows.
FloatTensor split_heads_qkv(const FloatTensor& t, int64_t n_heads, int64_t head_dim) {
  const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
  FloatTensor out{t.shape, std::vector<float>(t.values.size())};
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t part = 0; part < 3; ++part)
      for (int64_t d = 0; d < head_dim; ++d) {
        const int64_t src = (h * 3 + part) * head_dim + d;
        const int64_t dst = (part * n_heads + h) * head_dim + d;
        std::copy_n(t.values.begin() + src * cols, cols, out.values.begin() + dst * cols);
      }
  return out;
}

using Tensors = std::map<std::string, FloatTensor>;

void map_llama(const SafetensorsFile& f, const ModelConfig& c, Tensors& t) {
  t["token_embd.weight"] = read_tensor(f, "model.embed_tokens.weight");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string hf = "model.layers." + std::to_string(i) + ".", k = "blk." + std::to_string(i) + ".";
    t[k + "attn_norm.weight"] = read_tensor(f, hf + "input_layernorm.weight");
    t[k + "attn_qkv.weight"] = concat({read_tensor(f, hf + "self_attn.q_proj.weight"),
                                       read_tensor(f, hf + "self_attn.k_proj.weight"),
                                       read_tensor(f, hf + "self_attn.v_proj.weight")});
    if (f.find(hf + "self_attn.q_proj.bias"))  // Qwen2
      t[k + "attn_qkv.bias"] = concat({read_tensor(f, hf + "self_attn.q_proj.bias"),
                                       read_tensor(f, hf + "self_attn.k_proj.bias"),
                                       read_tensor(f, hf + "self_attn.v_proj.bias")});
    t[k + "attn_out.weight"] = read_tensor(f, hf + "self_attn.o_proj.weight");
    t[k + "ffn_norm.weight"] = read_tensor(f, hf + "post_attention_layernorm.weight");
    t[k + "ffn_up.weight"] =
        concat({read_tensor(f, hf + "mlp.gate_proj.weight"), read_tensor(f, hf + "mlp.up_proj.weight")});
    t[k + "ffn_down.weight"] = read_tensor(f, hf + "mlp.down_proj.weight");
  }
  t["output_norm.weight"] = read_tensor(f, "model.norm.weight");
  if (!c.tied_embeddings) t["output.weight"] = read_tensor(f, "lm_head.weight");
}

void map_gpt2(const SafetensorsFile& f, const ModelConfig& c, Tensors& t) {
  t["token_embd.weight"] = read_tensor(f, "transformer.wte.weight");
  t["pos_embd.weight"] = read_tensor(f, "transformer.wpe.weight");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string hf = "transformer.h." + std::to_string(i) + ".", k = "blk." + std::to_string(i) + ".";
    for (const char* w : {"weight", "bias"}) {
      t[k + "attn_norm." + w] = read_tensor(f, hf + "ln_1." + w);
      t[k + "ffn_norm." + w] = read_tensor(f, hf + "ln_2." + w);
    }
    t[k + "attn_qkv.weight"] = transpose(read_tensor(f, hf + "attn.c_attn.weight"));
    t[k + "attn_qkv.bias"] = read_tensor(f, hf + "attn.c_attn.bias");
    t[k + "attn_out.weight"] = transpose(read_tensor(f, hf + "attn.c_proj.weight"));
    t[k + "attn_out.bias"] = read_tensor(f, hf + "attn.c_proj.bias");
    t[k + "ffn_up.weight"] = transpose(read_tensor(f, hf + "mlp.c_fc.weight"));
    t[k + "ffn_up.bias"] = read_tensor(f, hf + "mlp.c_fc.bias");
    t[k + "ffn_down.weight"] = transpose(read_tensor(f, hf + "mlp.c_proj.weight"));
    t[k + "ffn_down.bias"] = read_tensor(f, hf + "mlp.c_proj.bias");
  }
  t["output_norm.weight"] = read_tensor(f, "transformer.ln_f.weight");
  t["output_norm.bias"] = read_tensor(f, "transformer.ln_f.bias");
}

// GPT-NeoX and BLOOM share a layout: [head][q, k, v] fused QKV, dense projections, LayerNorms with biases.
void map_neox_like(const SafetensorsFile& f, const ModelConfig& c, Tensors& t, const std::string& layers,
                   const std::string& attn) {
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string hf = layers + std::to_string(i) + ".", k = "blk." + std::to_string(i) + ".";
    for (const char* w : {"weight", "bias"}) {
      t[k + "attn_norm." + w] = read_tensor(f, hf + "input_layernorm." + w);
      t[k + "ffn_norm." + w] = read_tensor(f, hf + "post_attention_layernorm." + w);
      t[k + "attn_qkv." + w] = split_heads_qkv(read_tensor(f, hf + attn + ".query_key_value." + w), c.n_heads,
                                               c.head_dim);
      t[k + "attn_out." + w] = read_tensor(f, hf + attn + ".dense." + w);
      t[k + "ffn_up." + w] = read_tensor(f, hf + "mlp.dense_h_to_4h." + w);
      t[k + "ffn_down." + w] = read_tensor(f, hf + "mlp.dense_4h_to_h." + w);
    }
  }
}

void map_gptneox(const SafetensorsFile& f, const ModelConfig& c, Tensors& t) {
  t["token_embd.weight"] = read_tensor(f, "gpt_neox.embed_in.weight");
  map_neox_like(f, c, t, "gpt_neox.layers.", "attention");
  t["output_norm.weight"] = read_tensor(f, "gpt_neox.final_layer_norm.weight");
  t["output_norm.bias"] = read_tensor(f, "gpt_neox.final_layer_norm.bias");
  t["output.weight"] = read_tensor(f, "embed_out.weight");
}

void map_bloom(const SafetensorsFile& f, const ModelConfig& c, Tensors& t) {
  t["token_embd.weight"] = read_tensor(f, "transformer.word_embeddings.weight");
  t["token_embd_norm.weight"] = read_tensor(f, "transformer.word_embeddings_layernorm.weight");
  t["token_embd_norm.bias"] = read_tensor(f, "transformer.word_embeddings_layernorm.bias");
  map_neox_like(f, c, t, "transformer.h.", "self_attention");
  t["output_norm.weight"] = read_tensor(f, "transformer.ln_f.weight");
  t["output_norm.bias"] = read_tensor(f, "transformer.ln_f.bias");
}

void map_gptj(const SafetensorsFile& f, const ModelConfig& c, Tensors& t) {
  t["token_embd.weight"] = read_tensor(f, "transformer.wte.weight");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string hf = "transformer.h." + std::to_string(i) + ".", k = "blk." + std::to_string(i) + ".";
    t[k + "attn_norm.weight"] = read_tensor(f, hf + "ln_1.weight");
    t[k + "attn_norm.bias"] = read_tensor(f, hf + "ln_1.bias");
    t[k + "attn_qkv.weight"] = concat({read_tensor(f, hf + "attn.q_proj.weight"),
                                       read_tensor(f, hf + "attn.k_proj.weight"),
                                       read_tensor(f, hf + "attn.v_proj.weight")});
    t[k + "attn_out.weight"] = read_tensor(f, hf + "attn.out_proj.weight");
    t[k + "ffn_up.weight"] = read_tensor(f, hf + "mlp.fc_in.weight");
    t[k + "ffn_up.bias"] = read_tensor(f, hf + "mlp.fc_in.bias");
    t[k + "ffn_down.weight"] = read_tensor(f, hf + "mlp.fc_out.weight");
    t[k + "ffn_down.bias"] = read_tensor(f, hf + "mlp.fc_out.bias");
  }
  t["output_norm.weight"] = read_tensor(f, "transformer.ln_f.weight");
  t["output_norm.bias"] = read_tensor(f, "transformer.ln_f.bias");
  t["output.weight"] = read_tensor(f, "lm_head.weight");
  t["output.bias"] = read_tensor(f, "lm_head.bias");
}

// OPT: fused Q, K, V; LayerNorms named per stage; a projected embedding when word_embed_proj_dim differs.
void map_opt(const SafetensorsFile& f, const ModelConfig& c, Tensors& t) {
  const std::string d = "model.decoder.";
  t["token_embd.weight"] = read_tensor(f, d + "embed_tokens.weight");
  t["pos_embd.weight"] = read_tensor(f, d + "embed_positions.weight");
  if (c.projects_embedding()) {
    t["token_embd_proj.weight"] = read_tensor(f, d + "project_in.weight");
    t["output_proj.weight"] = read_tensor(f, d + "project_out.weight");
  }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string hf = d + "layers." + std::to_string(i) + ".", k = "blk." + std::to_string(i) + ".";
    for (const char* w : {"weight", "bias"}) {
      t[k + "attn_norm." + w] = read_tensor(f, hf + "self_attn_layer_norm." + w);
      t[k + "attn_qkv." + w] = concat({read_tensor(f, hf + "self_attn.q_proj." + w),
                                       read_tensor(f, hf + "self_attn.k_proj." + w),
                                       read_tensor(f, hf + "self_attn.v_proj." + w)});
      t[k + "attn_out." + w] = read_tensor(f, hf + "self_attn.out_proj." + w);
      t[k + "ffn_norm." + w] = read_tensor(f, hf + "final_layer_norm." + w);
      t[k + "ffn_up." + w] = read_tensor(f, hf + "fc1." + w);
      t[k + "ffn_down." + w] = read_tensor(f, hf + "fc2." + w);
    }
  }
  if (c.final_norm) {
    t["output_norm.weight"] = read_tensor(f, d + "final_layer_norm.weight");
    t["output_norm.bias"] = read_tensor(f, d + "final_layer_norm.bias");
  }
}

// BERT: word, position and token-type embeddings with a LayerNorm; each block's LayerNorms follow its
// residual adds.
void map_bert(const SafetensorsFile& f, const ModelConfig& c, Tensors& t) {
  t["token_embd.weight"] = read_tensor(f, "embeddings.word_embeddings.weight");
  t["pos_embd.weight"] = read_tensor(f, "embeddings.position_embeddings.weight");
  t["token_type_embd.weight"] = read_tensor(f, "embeddings.token_type_embeddings.weight");
  for (const char* w : {"weight", "bias"}) {
    t[std::string("token_embd_norm.") + w] = read_tensor(f, std::string("embeddings.LayerNorm.") + w);
    for (int64_t i = 0; i < c.n_layers; ++i) {
      const std::string hf = "encoder.layer." + std::to_string(i) + ".", k = "blk." + std::to_string(i) + ".";
      t[k + "attn_qkv." + w] = concat({read_tensor(f, hf + "attention.self.query." + w),
                                       read_tensor(f, hf + "attention.self.key." + w),
                                       read_tensor(f, hf + "attention.self.value." + w)});
      t[k + "attn_out." + w] = read_tensor(f, hf + "attention.output.dense." + w);
      t[k + "attn_norm." + w] = read_tensor(f, hf + "attention.output.LayerNorm." + w);
      t[k + "ffn_up." + w] = read_tensor(f, hf + "intermediate.dense." + w);
      t[k + "ffn_down." + w] = read_tensor(f, hf + "output.dense." + w);
      t[k + "ffn_norm." + w] = read_tensor(f, hf + "output.LayerNorm." + w);
    }
  }
}

template <typename T>
std::vector<T> read_raw(const SafetensorsFile& file, const std::string& name, SafetensorsDtype dtype) {
  const SafetensorsTensor& t = file.tensor(name);
  KILN_CHECK(t.dtype == dtype, "reference tensor {} has dtype {}", name, safetensors_dtype_name(t.dtype));
  std::vector<T> out(t.numel);
  std::memcpy(out.data(), file.data(t), t.n_bytes);
  return out;
}

}  // namespace

TinyModel load_tiny_model(const std::string& name) {
  const std::string dir = fixture_dir(name);
  std::ifstream config_file(dir + "/kiln_config.json");
  KILN_CHECK(config_file.good(), "missing fixture {}/kiln_config.json: run tests/engine/make_tiny_models.py", dir);
  TinyModel model;
  model.config = model_config_from_json(nlohmann::json::parse(config_file));

  const SafetensorsFile file = SafetensorsFile::open(dir + "/model.safetensors");
  const std::string& arch = model.config.architecture;
  if (arch == "llama" || arch == "mistral" || arch == "qwen2") map_llama(file, model.config, model.tensors);
  else if (arch == "gpt2") map_gpt2(file, model.config, model.tensors);
  else if (arch == "gptneox") map_gptneox(file, model.config, model.tensors);
  else if (arch == "gptj") map_gptj(file, model.config, model.tensors);
  else if (arch == "bloom") map_bloom(file, model.config, model.tensors);
  else if (arch == "opt") map_opt(file, model.config, model.tensors);
  else if (arch == "bert") map_bert(file, model.config, model.tensors);
  else fail("fixture {} has architecture '{}', which the test helper cannot map", dir, arch);
  return model;
}

TensorStore::TensorStore(const TinyModel& model, DType matrix_dtype, uint32_t max_group_size) {
  for (const auto& [name, tensor] : model.tensors) {
    TensorView v;
    v.name = name;
    v.n_dims = int(tensor.shape.size());
    for (int i = 0; i < v.n_dims; ++i) v.dims[size_t(i)] = tensor.shape[size_t(i)];
    v.dtype = v.n_dims == 1 ? DType::F32 : matrix_dtype;
    const size_t n = tensor.values.size();
    uint32_t group_size = max_group_size;
    const float* src = tensor.values.data();
    std::vector<uint8_t>& bytes = storage_.emplace_back(n * dtype_bytes(v.dtype));
    if (v.dtype == DType::F32) {
      std::memcpy(bytes.data(), src, n * sizeof(float));
    } else if (v.dtype == DType::F16 || v.dtype == DType::BF16) {
      auto* out = reinterpret_cast<uint16_t*>(bytes.data());
      for (size_t i = 0; i < n; ++i) out[i] = v.dtype == DType::F16 ? fp32_to_fp16(src[i]) : fp32_to_bf16(src[i]);
    } else {
      KILN_CHECK(v.dtype == DType::I8, "cannot store {} as {}", name, dtype_name(v.dtype));
      while (v.cols() % group_size != 0) group_size /= 2;  // 48 columns take groups of 16
      // q = round(x / s) with s = max|x| / 127 of the group, rounded to fp16 first so q matches the stored scale.
      std::vector<uint8_t>& scale_bytes = storage_.emplace_back(n / group_size * sizeof(uint16_t));
      auto* scales = reinterpret_cast<uint16_t*>(scale_bytes.data());
      auto* q = reinterpret_cast<int8_t*>(bytes.data());
      for (size_t g = 0; g < n / group_size; ++g) {
        float amax = 0;
        for (size_t i = 0; i < group_size; ++i) amax = std::max(amax, std::fabs(src[g * group_size + i]));
        scales[g] = fp32_to_fp16(amax / 127.0f);
        const float s = fp16_to_fp32(scales[g]);
        for (size_t i = 0; i < group_size; ++i) {
          const float r = s > 0 ? std::round(src[g * group_size + i] / s) : 0.0f;
          q[g * group_size + i] = int8_t(std::clamp(r, -127.0f, 127.0f));
        }
      }
      v.scales = scales;
      v.group_size = group_size;
    }
    v.data = bytes.data();
    v.bytes = bytes.size();
    views_[name] = v;
  }
}

const TensorView* TensorStore::find(std::string_view name) const {
  auto it = views_.find(name);
  return it == views_.end() ? nullptr : &it->second;
}

std::vector<PromptReference> load_reference(const std::string& name) {
  const SafetensorsFile file = SafetensorsFile::open(fixture_dir(name) + "/reference.safetensors");
  std::vector<PromptReference> prompts;
  for (int i = 0; file.find("prompt" + std::to_string(i) + ".tokens"); ++i) {
    const std::string p = "prompt" + std::to_string(i) + ".";
    PromptReference r;
    r.tokens = read_raw<int32_t>(file, p + "tokens", SafetensorsDtype::I32);
    r.positions = read_raw<int32_t>(file, p + "positions", SafetensorsDtype::I32);
    r.logits = read_raw<float>(file, p + "logits", SafetensorsDtype::F32);
    r.max = read_raw<float>(file, p + "max", SafetensorsDtype::F32);
    r.argmax = read_raw<int32_t>(file, p + "argmax", SafetensorsDtype::I32);
    r.logsumexp = read_raw<float>(file, p + "logsumexp", SafetensorsDtype::F32);
    prompts.push_back(std::move(r));
  }
  KILN_CHECK(!prompts.empty(), "no prompts in the reference of {}", name);
  return prompts;
}

std::vector<HiddenReference> load_hidden_reference(const std::string& name) {
  const SafetensorsFile file = SafetensorsFile::open(fixture_dir(name) + "/reference.safetensors");
  std::vector<HiddenReference> prompts;
  for (int i = 0; file.find("prompt" + std::to_string(i) + ".tokens"); ++i) {
    const std::string p = "prompt" + std::to_string(i) + ".";
    prompts.push_back({read_raw<int32_t>(file, p + "tokens", SafetensorsDtype::I32),
                       read_raw<float>(file, p + "hidden", SafetensorsDtype::F32)});
  }
  KILN_CHECK(!prompts.empty(), "no prompts in the reference of {}", name);
  return prompts;
}

TinyModel random_llama(const ModelConfig& config, std::mt19937& rng) {
  TinyModel model;
  model.config = config;
  const ModelConfig& c = model.config;
  std::normal_distribution<float> normal(0.0f, 0.02f);
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool ones) {
    FloatTensor& t = model.tensors[name];
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    t.shape = std::move(shape);
    t.values.resize(size_t(n), 1.0f);
    if (!ones)
      for (float& v : t.values) v = normal(rng);
  };
  add("token_embd.weight", {c.n_vocab, c.dim}, false);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {c.dim}, true);
    add(p + "attn_qkv.weight", {c.qkv_dim(), c.dim}, false);
    add(p + "attn_out.weight", {c.dim, c.q_dim()}, false);
    add(p + "ffn_norm.weight", {c.dim}, true);
    add(p + "ffn_up.weight", {2 * c.ffn_dim, c.dim}, false);
    add(p + "ffn_down.weight", {c.dim, c.ffn_dim}, false);
  }
  add("output_norm.weight", {c.dim}, true);
  add("output.weight", {c.n_vocab, c.dim}, false);
  return model;
}

BackendOptions tiny_backend_options(int64_t max_batch) {
  BackendOptions options;
  options.n_ctx = 512;
  options.n_threads = 2;
  options.max_batch = max_batch;
  return options;
}

std::vector<int32_t> prompt_prefix(const std::vector<PromptReference>& refs, size_t n) {
  const auto& longest = std::max_element(refs.begin(), refs.end(), [](const auto& a, const auto& b) {
                          return a.tokens.size() < b.tokens.size();
                        })->tokens;
  return {longest.begin(), longest.begin() + long(std::min(n, longest.size()))};
}

std::vector<float> forward_all(Backend& backend, const std::vector<int32_t>& tokens) {
  std::vector<float> out(tokens.size() * size_t(backend.config().output_width()));
  backend.forward(tokens.data(), int64_t(tokens.size()), 0, out.data(), true);
  return out;
}

float kept_logit_error(const PromptReference& ref, const std::vector<float>& logits, int64_t n_vocab) {
  float worst = 0;
  for (size_t m = 0; m < ref.positions.size(); ++m) {
    const float* row = logits.data() + ref.positions[m] * n_vocab;
    for (int64_t v = 0; v < n_vocab; ++v)
      worst = std::max(worst, std::fabs(row[v] - ref.logits[m * size_t(n_vocab) + size_t(v)]));
  }
  return worst;
}

float max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
  float worst = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  return a.size() == b.size() ? worst : INFINITY;
}

}  // namespace kiln::test
