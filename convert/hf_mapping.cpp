#include "convert/hf_mapping.h"

#include <algorithm>

namespace kiln::hf {

std::optional<nlohmann::json> read_optional_json(const HfFolder& folder, const std::string& relative) {
  constexpr uintmax_t kMaxBytes = uintmax_t(16) << 20;
  const std::filesystem::path path = folder.dir() / relative;
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) return std::nullopt;
  return read_bounded_json(path, kMaxBytes);
}

MlpKind activation(const HfFolder& folder, const char* key, const std::string& fallback) {
  const std::string name = value_or<std::string>(folder, key, fallback);
  if (name == "gelu") return MlpKind::Gelu;
  // All three are the tanh approximation, written three ways.
  if (name == "gelu_new" || name == "gelu_fast" || name == "gelu_pytorch_tanh") return MlpKind::GeluTanh;
  if (name == "relu") return MlpKind::Relu;
  fail("'{}/config.json': activation '{}' ({}) is not supported (gelu, gelu_new, gelu_fast, gelu_pytorch_tanh, relu "
       "are)",
       folder.dir().string(), name, key);
}

void read_rope(const HfFolder& folder, ModelConfig& c) {
  const auto& config = folder.config();
  nlohmann::json rope = nlohmann::json::object();
  if (auto it = config.find("rope_parameters"); it != config.end() && it->is_object()) rope = *it;
  if (auto it = config.find("rope_scaling"); it != config.end() && it->is_object()) rope.update(*it);
  // rope[key] as a float, else the fallback.
  const auto rope_float = [&](const char* key, float fallback) {
    const auto it = rope.find(key);
    if (it == rope.end() || it->is_null()) return fallback;
    return json_float(*it, fmt::format("'{}/config.json': rope '{}'", folder.dir().string(), key));
  };
  try {
    const float theta = value_or<float>(folder, "rope_theta", value_or<float>(folder, "rotary_emb_base", 10000.0f));
    c.rope_theta = rope_float("rope_theta", theta);
    const std::string type = rope.value("rope_type", rope.value("type", std::string("default")));
    if (type == "linear") {
      c.rope_scale = rope_float("factor", 1.0f);
    } else {
      KILN_CHECK(type == "default", "'{}': rope type '{}' is not supported (default and linear are)",
                 folder.dir().string(), type);
    }
    const float top_level =
        value_or<float>(folder, "partial_rotary_factor", value_or<float>(folder, "rotary_pct", 1.0f));
    const float partial = rope_float("partial_rotary_factor", top_level);
    KILN_CHECK(partial > 0 && partial <= 1, "'{}/config.json': partial rotary factor {} is not in (0, 1]",
               folder.dir().string(), partial);
    c.rotary_dim = int64_t(float(c.head_dim) * partial) / 2 * 2;
  } catch (const nlohmann::json::exception& e) {
    fail("'{}/config.json': unexpected rope settings: {}", folder.dir().string(), e.what());
  }
}

std::string find_prefix(const HfFolder& folder, std::initializer_list<const char*> candidates,
                        const std::string& probe) {
  for (const char* prefix : candidates)
    if (folder.find(prefix + probe)) return prefix;
  fail("'{}' has no tensor '{}' (under any of the prefixes this family uses): is it a complete checkpoint?",
       folder.dir().string(), probe);
}

SourceTensor stacked(const HfFolder& folder, std::string name, const std::vector<std::string>& parts) {
  SourceTensor t;
  t.name = std::move(name);
  int64_t rows = 0, cols = -1, numel = 0;
  size_t n_vectors = 0;
  std::vector<uint64_t> sizes;
  std::vector<std::string> types;
  for (const auto& part : parts) {
    const HfTensorRef ref = folder.tensor(part);
    const auto& shape = ref.tensor->shape;
    types.push_back(safetensors_dtype_name(ref.tensor->dtype));
    KILN_CHECK(shape.size() == 1 || shape.size() == 2, "tensor '{}' has shape {}, expected 1 or 2 dims", part,
               ref.tensor->shape_string());
    if (shape.size() == 1) {
      ++n_vectors;
    } else {
      KILN_CHECK(cols < 0 || int64_t(shape[1]) == cols, "tensor '{}' has rows of {}, expected {}", part, shape[1],
                 cols);
      cols = int64_t(shape[1]);
      rows += int64_t(shape[0]);
    }
    numel += int64_t(ref.tensor->numel);
    sizes.push_back(ref.tensor->numel);
  }
  KILN_CHECK(n_vectors == 0 || n_vectors == parts.size(), "cannot stack vectors with matrices for '{}'", t.name);
  t.dims = n_vectors ? std::vector<int64_t>{numel} : std::vector<int64_t>{rows, cols};
  t.source_type = joined_types(types);
  t.read = [&folder, parts, sizes](float* out) {
    for (size_t i = 0; i < parts.size(); ++i) {
      folder.read_f32(parts[i], out);
      out += sizes[i];
    }
  };
  return t;
}

SourceTensor transposed(const HfFolder& folder, std::string name, const std::string& part) {
  const HfTensorRef ref = folder.tensor(part);
  KILN_CHECK(ref.tensor->shape.size() == 2, "tensor '{}' has shape {}, expected a matrix", part,
             ref.tensor->shape_string());
  const auto rows = int64_t(ref.tensor->shape[0]), cols = int64_t(ref.tensor->shape[1]);
  SourceTensor t;
  t.name = std::move(name);
  t.dims = {cols, rows};
  t.source_type = safetensors_dtype_name(ref.tensor->dtype);
  t.read = [&folder, part, rows, cols](float* out) {
    std::vector<float> source(size_t(rows * cols));
    folder.read_f32(part, source.data());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = source[size_t(r * cols + c)];
  };
  return t;
}

SourceTensor heads_to_qkv(const HfFolder& folder, std::string name, const std::string& part, int64_t n_heads,
                          int64_t head_dim) {
  const HfTensorRef ref = folder.tensor(part);
  const auto& shape = ref.tensor->shape;
  KILN_CHECK((shape.size() == 1 || shape.size() == 2) && int64_t(shape[0]) == 3 * n_heads * head_dim,
             "tensor '{}' has shape {}, expected {} rows (3 x {} heads x {})", part, ref.tensor->shape_string(),
             3 * n_heads * head_dim, n_heads, head_dim);
  const int64_t cols = shape.size() == 2 ? int64_t(shape[1]) : 1;
  SourceTensor t;
  t.name = std::move(name);
  t.dims = shape.size() == 2 ? std::vector<int64_t>{int64_t(shape[0]), cols} : std::vector<int64_t>{int64_t(shape[0])};
  t.source_type = safetensors_dtype_name(ref.tensor->dtype);
  t.read = [&folder, part, n_heads, head_dim, cols](float* out) {
    std::vector<float> source(size_t(3 * n_heads * head_dim * cols));
    folder.read_f32(part, source.data());
    for (int64_t h = 0; h < n_heads; ++h)
      for (int64_t which = 0; which < 3; ++which)
        for (int64_t d = 0; d < head_dim; ++d) {
          const int64_t from = (h * 3 + which) * head_dim + d, to = (which * n_heads + h) * head_dim + d;
          std::copy_n(source.begin() + from * cols, cols, out + to * cols);
        }
  };
  return t;
}

SourceTensor filled(std::string name, int64_t n, float value) {
  SourceTensor t;
  t.name = std::move(name);
  t.dims = {n};
  t.read = [n, value](float* out) { std::fill_n(out, n, value); };
  return t;
}

void read_layer_norm_shape(const HfFolder& folder, ModelConfig& c, const char* architecture) {
  c.architecture = architecture;
  c.n_vocab = value<int64_t>(folder, "vocab_size");
  c.dim = value_any<int64_t>(folder, {"n_embd", "hidden_size", "n_embed"});
  c.n_layers = value_any<int64_t>(folder, {"n_layer", "num_hidden_layers"});
  c.n_heads = value_any<int64_t>(folder, {"n_head", "num_attention_heads"});
  KILN_CHECK(c.n_heads > 0 && c.dim % c.n_heads == 0, "'{}': {} heads do not divide the width {}",
             folder.dir().string(), c.n_heads, c.dim);
  c.n_kv_heads = c.n_heads;
  c.head_dim = c.dim / c.n_heads;
  c.norm = NormKind::Layer;
}

}  // namespace kiln::hf
