#include "engine/workspace.h"

#include "engine/error.h"

namespace kiln {

Workspace make_workspace(const ModelConfig& c, int64_t max_tokens) {
  KILN_CHECK(max_tokens >= 1 && max_tokens <= 65536, "the batch size {} is outside [1, 65536]", max_tokens);
  const bool gated = c.mlp == MlpKind::SiluGated || c.mlp == MlpKind::GeluGated;
  const auto n = size_t(max_tokens);
  Workspace w;
  w.max_tokens = max_tokens;
  w.x.resize(n * size_t(c.dim));
  w.xn.resize(n * size_t(c.dim));
  w.qkv.resize(n * size_t(c.qkv_dim()));
  w.q.resize(n * size_t(c.q_dim()));
  w.k.resize(n * size_t(c.kv_dim()));
  w.att.resize(n * size_t(c.q_dim()));
  w.attn_proj.resize(n * size_t(c.dim));
  w.up.resize(n * size_t(gated ? 2 * c.ffn_dim : c.ffn_dim));
  w.act.resize(n * size_t(c.ffn_dim));
  w.ffn_out.resize(n * size_t(c.dim));
  if (c.projects_embedding()) w.embd.resize(n * size_t(c.embd_dim()));
  w.positions.resize(n);
  return w;
}

}  // namespace kiln
