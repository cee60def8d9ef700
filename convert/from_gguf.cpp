#include "convert/from_gguf.h"

#include <fmt/format.h>

#include "engine/error.h"

namespace kiln {
namespace {

int64_t require_int(const GgufFile& gguf, const std::string& key) {
  auto value = gguf.get_int(key);
  KILN_CHECK(value.has_value(), "'{}' lacks the metadata key '{}'", gguf.path(), key);
  return *value;
}

// A kiln tensor made by stacking the rows of one or more GGUF tensors (q, k, v -> attn_qkv).
SourceTensor stacked(const GgufFile& gguf, std::string name, const std::vector<std::string>& parts) {
  SourceTensor t;
  t.name = std::move(name);
  std::vector<const GgufTensor*> sources;
  std::vector<std::string> types;
  int64_t rows = 0, cols = -1;
  for (const auto& part : parts) {
    const GgufTensor& src = gguf.tensor(part);
    types.push_back(ggml_type_name(src.type));
    KILN_CHECK(src.shape.size() <= 2, "'{}': tensor '{}' has {} dims, expected at most 2", gguf.path(), part,
               src.shape.size());
    KILN_CHECK(cols < 0 || int64_t(src.row_length()) == cols, "'{}': tensor '{}' has rows of {}, expected {}",
               gguf.path(), part, src.row_length(), cols);
    cols = int64_t(src.row_length());
    rows += int64_t(src.n_rows());
    sources.push_back(&src);
  }
  t.dims = sources.size() == 1 && sources[0]->shape.size() == 1 ? std::vector<int64_t>{cols}
                                                                 : std::vector<int64_t>{rows, cols};
  t.source_type = joined_types(types);
  t.read = [&gguf, sources](float* out) {
    for (const GgufTensor* src : sources) {
      gguf.dequantize(*src, out);
      out += src->numel;
    }
  };
  return t;
}

}  // namespace

TokenizerData tokenizer_from_gguf(const GgufFile& gguf) {
  TokenizerData d;
  const std::string model = gguf.get_string("tokenizer.ggml.model").value_or("");
  if (model == "gpt2") {
    d.kind = TokenizerKind::BytePairGpt2;
  } else if (model == "llama") {
    d.kind = TokenizerKind::SentencePiece;
  } else if (model == "bert") {
    d.kind = TokenizerKind::WordPiece;
  } else {
    fail("'{}': tokenizer.ggml.model '{}' is not supported (gpt2, llama, bert are)", gguf.path(), model);
  }
  d.pre_tokenizer = gguf.get_string("tokenizer.ggml.pre").value_or("");
  auto tokens = gguf.get_string_array("tokenizer.ggml.tokens");
  KILN_CHECK(tokens.has_value() && !tokens->empty(), "'{}' has no tokenizer.ggml.tokens", gguf.path());
  d.tokens = std::move(*tokens);
  if (auto types = gguf.get_int_array("tokenizer.ggml.token_type"))
    d.token_types.assign(types->begin(), types->end());
  if (auto scores = gguf.get_float_array("tokenizer.ggml.scores")) d.scores = std::move(*scores);
  if (auto merges = gguf.get_string_array("tokenizer.ggml.merges")) d.merges = std::move(*merges);
  auto id = [&](const char* key) {
    const int64_t value = gguf.get_int(key).value_or(-1);
    KILN_CHECK(value >= -1 && value < int64_t(d.tokens.size()), "'{}': {} = {} is not a token id (vocabulary {})",
               gguf.path(), key, value, d.tokens.size());
    return int32_t(value);
  };
  d.bos_id = id("tokenizer.ggml.bos_token_id");
  d.eos_id = id("tokenizer.ggml.eos_token_id");
  d.pad_id = id("tokenizer.ggml.padding_token_id");
  d.unk_id = id("tokenizer.ggml.unknown_token_id");
  if (d.eos_id >= 0) d.eos_ids.push_back(d.eos_id);
  const int32_t eot = id("tokenizer.ggml.eot_token_id");
  if (eot >= 0 && eot != d.eos_id) d.eos_ids.push_back(eot);
  d.add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token").value_or(d.kind == TokenizerKind::SentencePiece);
  d.add_space_prefix =
      gguf.get_bool("tokenizer.ggml.add_space_prefix").value_or(d.kind == TokenizerKind::SentencePiece);
  d.chat_template = gguf.get_string("tokenizer.chat_template").value_or("");
  return d;
}

Conversion conversion_from_gguf(const GgufFile& gguf) {
  const std::string arch = gguf.get_string("general.architecture").value_or("");
  KILN_CHECK(arch == kGgufArchitecture,
             "'{}': architecture '{}' is not supported from GGUF yet (supported: {}; a Hugging Face folder of the "
             "model may be: see kiln convert --list-archs)",
             gguf.path(), arch, kGgufArchitecture);
  const std::string p = arch + ".";
  Conversion conv;
  ModelConfig& c = conv.config;
  c.architecture = arch;
  c.dim = require_int(gguf, p + "embedding_length");
  c.n_layers = require_int(gguf, p + "block_count");
  c.n_heads = require_int(gguf, p + "attention.head_count");
  c.n_kv_heads = gguf.get_int(p + "attention.head_count_kv").value_or(c.n_heads);
  KILN_CHECK(c.n_heads > 0 && c.dim % c.n_heads == 0, "'{}': embedding_length {} is not a multiple of head_count {}",
             gguf.path(), c.dim, c.n_heads);
  c.head_dim = gguf.get_int(p + "attention.key_length").value_or(c.dim / c.n_heads);
  c.ffn_dim = require_int(gguf, p + "feed_forward_length");
  c.n_ctx_train = require_int(gguf, p + "context_length");
  c.norm = NormKind::Rms;
  c.norm_eps = float(gguf.get_float(p + "attention.layer_norm_rms_epsilon").value_or(1e-5));
  c.position = PositionKind::Rotary;
  // llama.cpp's converter permutes Q and K rows so that adjacent pairs rotate together.
  c.rotary_style = RotaryStyle::EveryTwo;
  c.rotary_dim = gguf.get_int(p + "rope.dimension_count").value_or(c.head_dim);
  c.rope_theta = float(gguf.get_float(p + "rope.freq_base").value_or(10000.0));
  const std::string scaling = gguf.get_string(p + "rope.scaling.type").value_or("none");
  if (scaling == "linear") {
    c.rope_scale = float(gguf.get_float(p + "rope.scaling.factor").value_or(1.0));
  } else {
    KILN_CHECK(scaling == "none", "'{}': rope scaling '{}' is not supported (linear is)", gguf.path(), scaling);
  }
  c.mlp = MlpKind::SiluGated;
  c.tied_embeddings = gguf.find_tensor("output.weight") == nullptr;
  c.sliding_window = gguf.get_int(p + "attention.sliding_window").value_or(0);

  conv.tokenizer = tokenizer_from_gguf(gguf);
  const GgufTensor& embd = gguf.tensor("token_embd.weight");
  KILN_CHECK(embd.shape.size() == 2, "'{}': token_embd.weight has {} dims, expected 2", gguf.path(),
             embd.shape.size());
  c.n_vocab = int64_t(embd.shape[0]);
  c.validate();

  conv.provenance = {{"source", gguf.path()},
                     {"source_format", fmt::format("gguf v{}", gguf.version())},
                     {"name", gguf.get_string("general.name").value_or("")}};
  auto& out = conv.tensors;
  out.push_back(stacked(gguf, "token_embd.weight", {"token_embd.weight"}));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string src = fmt::format("blk.{}.", i), dst = fmt::format("blk.{}.", i);
    out.push_back(stacked(gguf, dst + "attn_norm.weight", {src + "attn_norm.weight"}));
    out.push_back(stacked(gguf, dst + "attn_qkv.weight", {src + "attn_q.weight", src + "attn_k.weight", src + "attn_v.weight"}));
    out.push_back(stacked(gguf, dst + "attn_out.weight", {src + "attn_output.weight"}));
    out.push_back(stacked(gguf, dst + "ffn_norm.weight", {src + "ffn_norm.weight"}));
    out.push_back(stacked(gguf, dst + "ffn_up.weight", {src + "ffn_gate.weight", src + "ffn_up.weight"}));
    out.push_back(stacked(gguf, dst + "ffn_down.weight", {src + "ffn_down.weight"}));
  }
  out.push_back(stacked(gguf, "output_norm.weight", {"output_norm.weight"}));
  if (!c.tied_embeddings) out.push_back(stacked(gguf, "output.weight", {"output.weight"}));
  return conv;
}

}  // namespace kiln
