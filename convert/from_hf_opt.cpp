// OPT checkpoints -> kiln tensors: learned positions offset by 2, ReLU, LayerNorm before (most sizes) or
// after (opt-350m) each block, and a narrower embedding projected in and out where word_embed_proj_dim
// differs from the width.
#include <fmt/format.h>

#include "convert/hf_mapping.h"

namespace kiln::hf {
namespace {

// A LayerNorm's weight and bias; ones and zeros for a LayerNorm without learned parameters.
void opt_layer_norm(const HfFolder& folder, std::vector<SourceTensor>& out, const std::string& dst,
                    const std::string& src, int64_t dim, bool affine) {
  if (affine) {
    out.push_back(same(folder, dst + ".weight", src + ".weight"));
    out.push_back(same(folder, dst + ".bias", src + ".bias"));
  } else {
    out.push_back(filled(dst + ".weight", dim, 1.0f));
    out.push_back(filled(dst + ".bias", dim, 0.0f));
  }
}

}  // namespace

void map_opt(const HfFolder& folder, Conversion& conv) {
  ModelConfig& c = conv.config;
  read_layer_norm_shape(folder, c, "opt");
  c.ffn_dim = value<int64_t>(folder, "ffn_dim");
  c.n_ctx_train = value<int64_t>(folder, "max_position_embeddings");
  c.norm_eps = 1e-5f;  // torch's LayerNorm default: OPT configs do not name it
  c.position = PositionKind::Learned;
  c.position_offset = 2;
  c.mlp = activation(folder, "activation_function", "relu");
  c.attention_bias = c.mlp_bias = value_or<bool>(folder, "enable_bias", true);
  c.tied_embeddings = value_or<bool>(folder, "tie_word_embeddings", true);
  const bool norm_before = value_or<bool>(folder, "do_layer_norm_before", true);
  c.post_norm = !norm_before;
  c.final_norm = norm_before && !value_or<bool>(folder, "_remove_final_layer_norm", false);
  const int64_t embd_dim = value_or<int64_t>(folder, "word_embed_proj_dim", c.dim);
  c.embedding_dim = embd_dim == c.dim ? 0 : embd_dim;
  const bool affine = value_or<bool>(folder, "layer_norm_elementwise_affine", true);

  const std::string p = find_prefix(folder, {"model.decoder.", "decoder.", ""}, "embed_tokens.weight");
  auto& out = conv.tensors;
  out.push_back(same(folder, "token_embd.weight", p + "embed_tokens.weight"));
  out.push_back(same(folder, "pos_embd.weight", p + "embed_positions.weight"));
  if (c.projects_embedding()) {
    out.push_back(same(folder, "token_embd_proj.weight", p + "project_in.weight"));
    out.push_back(same(folder, "output_proj.weight", p + "project_out.weight"));
  }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string src = fmt::format("{}layers.{}.", p, i), dst = fmt::format("blk.{}.", i);
    opt_layer_norm(folder, out, dst + "attn_norm", src + "self_attn_layer_norm", c.dim, affine);
    out.push_back(stacked(folder, dst + "attn_qkv.weight",
                          {src + "self_attn.q_proj.weight", src + "self_attn.k_proj.weight",
                           src + "self_attn.v_proj.weight"}));
    out.push_back(same(folder, dst + "attn_out.weight", src + "self_attn.out_proj.weight"));
    opt_layer_norm(folder, out, dst + "ffn_norm", src + "final_layer_norm", c.dim, affine);
    out.push_back(same(folder, dst + "ffn_up.weight", src + "fc1.weight"));
    out.push_back(same(folder, dst + "ffn_down.weight", src + "fc2.weight"));
    if (c.attention_bias) {
      out.push_back(stacked(folder, dst + "attn_qkv.bias",
                            {src + "self_attn.q_proj.bias", src + "self_attn.k_proj.bias",
                             src + "self_attn.v_proj.bias"}));
      out.push_back(same(folder, dst + "attn_out.bias", src + "self_attn.out_proj.bias"));
      out.push_back(same(folder, dst + "ffn_up.bias", src + "fc1.bias"));
      out.push_back(same(folder, dst + "ffn_down.bias", src + "fc2.bias"));
    }
  }
  if (c.final_norm) opt_layer_norm(folder, out, "output_norm", p + "final_layer_norm", c.dim, affine);
  if (!c.tied_embeddings) out.push_back(same(folder, "output.weight", "lm_head.weight"));
}

}  // namespace kiln::hf
