#include "engine/weights.h"

#include <algorithm>
#include <initializer_list>
#include <string>

#include "engine/error.h"
#include "engine/kiln_file.h"

namespace kiln {
namespace {

std::string shape_of(std::initializer_list<int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape.begin()[i]);
  return s + "]";
}

class Binder {
 public:
  explicit Binder(const TensorLookup& lookup) : lookup_(lookup) {}

  // A weight matrix of any float or int8 dtype with exactly this shape.
  TensorView matrix(const std::string& name, std::initializer_list<int64_t> shape) {
    const TensorView* t = lookup_(name);
    KILN_CHECK(t != nullptr, "the model lacks tensor '{}' (expected {}): convert the model again", name,
               shape_of(shape));
    check_shape(*t, name, shape);
    KILN_CHECK(t->dtype == DType::F32 || t->dtype == DType::F16 || t->dtype == DType::BF16 || t->dtype == DType::I8,
               "tensor '{}' has dtype {}, which is not a weight dtype: convert the model again", name,
               dtype_name(t->dtype));
    check_data(*t, name);
    if (t->dtype == DType::I8)
      KILN_CHECK(t->scales != nullptr && t->group_size > 0 && t->cols() % t->group_size == 0,
                 "int8 tensor '{}' lacks scales or has group size {} that does not divide {} columns", name,
                 t->group_size, t->cols());
    return *t;
  }

  // An f32 vector [n]; nullptr when absent and not required.
  const float* vector(const std::string& name, int64_t n, bool required) {
    const TensorView* t = lookup_(name);
    if (t == nullptr) {
      KILN_CHECK(!required, "the model lacks tensor '{}' (expected [{}]): convert the model again", name, n);
      return nullptr;
    }
    check_shape(*t, name, {n});
    KILN_CHECK(t->dtype == DType::F32, "tensor '{}' has dtype {}; 1-D tensors must be f32: convert the model again",
               name, dtype_name(t->dtype));
    check_data(*t, name);
    return static_cast<const float*>(t->data);
  }

  const TensorView* find(const std::string& name) { return lookup_(name); }

 private:
  static void check_shape(const TensorView& t, const std::string& name, std::initializer_list<int64_t> shape) {
    bool same = int(shape.size()) == t.n_dims;
    for (size_t i = 0; same && i < shape.size(); ++i) same = t.dims[i] == shape.begin()[i];
    KILN_CHECK(same, "tensor '{}' has shape {}, expected {}: the file does not match its model config", name,
               t.shape_string(), shape_of(shape));
  }

  static void check_data(const TensorView& t, const std::string& name) {
    KILN_CHECK(t.data != nullptr && t.bytes == uint64_t(t.numel()) * dtype_bytes(t.dtype),
               "tensor '{}' holds {} bytes, expected {} for {} {}", name, t.bytes,
               uint64_t(t.numel()) * dtype_bytes(t.dtype), dtype_name(t.dtype), t.shape_string());
  }

  const TensorLookup& lookup_;
};

}  // namespace

Weights bind_weights(const ModelConfig& c, const TensorLookup& lookup) {
  c.validate();
  Binder b(lookup);
  const bool layer_norm = c.norm == NormKind::Layer;
  const bool gated = c.mlp == MlpKind::SiluGated || c.mlp == MlpKind::GeluGated;
  const int64_t up_rows = gated ? 2 * c.ffn_dim : c.ffn_dim;

  Weights w;
  w.token_embd = b.matrix("token_embd.weight", {c.n_vocab, c.embd_dim()});
  if (c.projects_embedding()) w.token_embd_proj = b.matrix("token_embd_proj.weight", {c.dim, c.embd_dim()});
  if (c.n_token_types > 0) w.token_type_embd = b.matrix("token_type_embd.weight", {c.n_token_types, c.dim});
  if (c.position == PositionKind::Learned) {
    const TensorView* pos = b.find("pos_embd.weight");
    KILN_CHECK(pos != nullptr && pos->n_dims == 2,
               "the model uses learned positions but lacks a 2-D tensor 'pos_embd.weight': convert it again");
    w.pos_embd = b.matrix("pos_embd.weight", {pos->dims[0], c.dim});
    KILN_CHECK(w.pos_embd.dims[0] > c.position_offset, "pos_embd.weight has {} rows, not more than position_offset {}",
               w.pos_embd.dims[0], c.position_offset);
  }
  w.token_embd_norm = b.vector("token_embd_norm.weight", c.dim, false);
  if (w.token_embd_norm) w.token_embd_norm_bias = b.vector("token_embd_norm.bias", c.dim, layer_norm);

  w.layers.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[size_t(i)];
    l.attn_norm = b.vector(p + "attn_norm.weight", c.dim, true);
    l.attn_norm_bias = b.vector(p + "attn_norm.bias", c.dim, layer_norm);
    l.attn_qkv = b.matrix(p + "attn_qkv.weight", {c.qkv_dim(), c.dim});
    l.attn_qkv_bias = b.vector(p + "attn_qkv.bias", c.qkv_dim(), c.attention_bias);
    l.attn_out = b.matrix(p + "attn_out.weight", {c.dim, c.q_dim()});
    // Some families (Qwen2) bias only the QKV projection, so the output bias is bound when present.
    l.attn_out_bias = b.vector(p + "attn_out.bias", c.dim, false);
    if (!c.shared_layer_norm) {
      l.ffn_norm = b.vector(p + "ffn_norm.weight", c.dim, true);
      l.ffn_norm_bias = b.vector(p + "ffn_norm.bias", c.dim, layer_norm);
    }
    l.ffn_up = b.matrix(p + "ffn_up.weight", {up_rows, c.dim});
    l.ffn_up_bias = b.vector(p + "ffn_up.bias", up_rows, c.mlp_bias);
    l.ffn_down = b.matrix(p + "ffn_down.weight", {c.dim, c.ffn_dim});
    l.ffn_down_bias = b.vector(p + "ffn_down.bias", c.dim, c.mlp_bias);
  }

  if (c.final_norm) {
    w.output_norm = b.vector("output_norm.weight", c.dim, true);
    w.output_norm_bias = b.vector("output_norm.bias", c.dim, layer_norm);
  }
  if (c.lm_head) {
    if (c.projects_embedding()) w.output_proj = b.matrix("output_proj.weight", {c.embd_dim(), c.dim});
    w.output = c.tied_embeddings ? w.token_embd : b.matrix("output.weight", {c.n_vocab, c.embd_dim()});
    w.output_bias = b.vector("output.bias", c.n_vocab, false);
  }
  return w;
}

Weights bind_weights(const KilnFile& file) {
  try {
    return bind_weights(file.config(), [&file](std::string_view name) { return file.find(name); });
  } catch (const Error& e) {
    fail("'{}': {}", file.path(), e.what());
  }
}

int64_t context_size(const ModelConfig& c, const Weights& w, int64_t requested) {
  KILN_CHECK(requested >= 0, "the context size must be positive, got {}", requested);
  int64_t n_ctx = requested > 0 ? requested : std::min<int64_t>(c.n_ctx_train, 4096);
  if (c.position == PositionKind::Learned) {
    const int64_t limit = w.n_positions() - c.position_offset;
    KILN_CHECK(requested <= limit, "the model has learned positions for {} tokens; a context of {} is too long",
               limit, requested);
    n_ctx = std::min(n_ctx, limit);
  }
  KILN_CHECK(n_ctx > 0 && n_ctx < (int64_t(1) << 31), "the context size {} is out of range", n_ctx);
  return n_ctx;
}

}  // namespace kiln
