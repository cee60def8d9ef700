#include "convert/conversion.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>

#include "convert/kiln_writer.h"
#include "convert/quantize.h"
#include "engine/error.h"
#include "engine/tokenizer_metadata.h"

namespace kiln {
namespace {

constexpr const char* kConverterVersion = "kiln-convert 1";

// The dtype a tensor is stored as: matrices take the requested type, vectors stay f32. An int8 matrix
// whose rows do not split into groups falls back to f16 (rare: odd embedding widths).
DType storage_dtype(const SourceTensor& t, const ConvertOptions& options) {
  if (t.dims.size() < 2) return DType::F32;
  if (options.weight_dtype == DType::I8 && t.dims.back() % options.group_size != 0) return DType::F16;
  return options.weight_dtype;
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  const bool layer_norm = c.norm == NormKind::Layer;
  auto norm = [&](const std::string& name) {
    out.push_back({name + ".weight", {c.dim}});
    if (layer_norm) out.push_back({name + ".bias", {c.dim}});
  };
  out.push_back({"token_embd.weight", {c.n_vocab, c.embd_dim()}});
  if (c.projects_embedding()) out.push_back({"token_embd_proj.weight", {c.dim, c.embd_dim()}});
  if (c.position == PositionKind::Learned)
    out.push_back({"pos_embd.weight", {c.n_ctx_train + c.position_offset, c.dim}});
  if (c.n_token_types > 0) out.push_back({"token_type_embd.weight", {c.n_token_types, c.dim}});
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string blk = fmt::format("blk.{}.", i);
    const int64_t up_rows = c.mlp == MlpKind::SiluGated || c.mlp == MlpKind::GeluGated ? 2 * c.ffn_dim : c.ffn_dim;
    norm(blk + "attn_norm");
    out.push_back({blk + "attn_qkv.weight", {c.qkv_dim(), c.dim}});
    if (c.attention_bias) out.push_back({blk + "attn_qkv.bias", {c.qkv_dim()}});
    out.push_back({blk + "attn_out.weight", {c.dim, c.q_dim()}});
    // attn_out.bias is optional even with attention_bias: Qwen2 has biases on Q, K and V only.
    if (!c.shared_layer_norm) norm(blk + "ffn_norm");
    out.push_back({blk + "ffn_up.weight", {up_rows, c.dim}});
    if (c.mlp_bias) out.push_back({blk + "ffn_up.bias", {up_rows}});
    out.push_back({blk + "ffn_down.weight", {c.dim, c.ffn_dim}});
    if (c.mlp_bias) out.push_back({blk + "ffn_down.bias", {c.dim}});
  }
  if (c.final_norm) norm("output_norm");
  if (c.lm_head && c.projects_embedding()) out.push_back({"output_proj.weight", {c.embd_dim(), c.dim}});
  if (c.lm_head && !c.tied_embeddings) out.push_back({"output.weight", {c.n_vocab, c.embd_dim()}});
  return out;
}

std::string joined_types(const std::vector<std::string>& types) {
  std::vector<std::string> distinct;
  for (const std::string& type : types)
    if (std::find(distinct.begin(), distinct.end(), type) == distinct.end()) distinct.push_back(type);
  return fmt::format("{}", fmt::join(distinct, "+"));
}

void check_conversion(const Conversion& conversion) {
  conversion.config.validate();
  std::map<std::string, const SourceTensor*> by_name;
  for (const auto& t : conversion.tensors) {
    KILN_CHECK(by_name.emplace(t.name, &t).second, "the source maps two tensors to '{}'", t.name);
  }
  for (const auto& [name, shape] : expected_tensors(conversion.config)) {
    auto it = by_name.find(name);
    KILN_CHECK(it != by_name.end(), "the source has no tensor for '{}'", name);
    KILN_CHECK(it->second->dims == shape, "tensor '{}' has shape [{}], expected [{}]", name,
               fmt::join(it->second->dims, ", "), fmt::join(shape, ", "));
  }
}

void write_conversion(const Conversion& conversion, const std::string& output, const ConvertOptions& options) {
  check_conversion(conversion);
  KILN_CHECK(options.weight_dtype != DType::U8, "weights cannot be stored as u8");
  KILN_CHECK(options.group_size >= 8 && options.group_size <= 4096 && options.group_size % 8 == 0,
             "--group-size {} must be a multiple of 8 in [8, 4096]", options.group_size);

  nlohmann::json provenance = conversion.provenance;
  provenance["converter"] = kConverterVersion;
  provenance["weight_dtype"] = dtype_name(options.weight_dtype);
  if (options.weight_dtype == DType::I8) provenance["group_size"] = options.group_size;
  nlohmann::json metadata = {{"model", model_config_to_json(conversion.config)},
                             {"tokenizer", tokenizer_to_json(conversion.tokenizer)},
                             {"provenance", provenance}};

  KilnWriter writer(std::move(metadata));
  std::vector<std::string> log_lines;  // [tensor] as the writer adds them
  for (const auto& t : conversion.tensors) {
    const DType dtype = storage_dtype(t, options);
    log_lines.push_back(fmt::format("{} {} -> {} [{}]", t.name, t.source_type.empty() ? "made" : t.source_type,
                                    dtype_name(dtype), fmt::join(t.dims, ", ")));
    TensorSpec spec{t.name, dtype, t.dims, dtype == DType::I8 ? options.group_size : 0u};
    writer.add(spec, [&t, dtype, group = spec.group_size](std::span<uint8_t> values, std::span<uint8_t> scales) {
      int64_t numel = 1;
      for (int64_t d : t.dims) numel *= d;
      std::vector<float> f32(static_cast<size_t>(numel));
      t.read(f32.data());
      quantize_rows(f32.data(), numel / t.dims.back(), t.dims.back(), dtype, group, values, scales);
    });
  }
  const std::string& spm = conversion.tokenizer.spm_model;
  if (!spm.empty()) {
    log_lines.push_back(fmt::format("{} SentencePiece model -> u8 [{}]", kSpmModelTensor, spm.size()));
    writer.add({std::string(kSpmModelTensor), DType::U8, {int64_t(spm.size())}, 0},
               [&spm](std::span<uint8_t> values, std::span<uint8_t>) { std::copy(spm.begin(), spm.end(), values.begin()); });
  }

  const auto start = std::chrono::steady_clock::now();
  WriteProgress progress;
  if (options.log_tensors) {
    progress = [&log_lines](size_t done, size_t, uint64_t) { fmt::print(stderr, "{}\n", log_lines[done - 1]); };
  } else if (options.progress) {
    progress = [start](size_t done, size_t total, uint64_t bytes) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const int width = 30, filled = int(width * done / std::max<size_t>(total, 1));
      fmt::print(stderr, "\r[{:<{}}] {}/{} tensors, {:.0f} MB, {:.0f} MB/s", std::string(size_t(filled), '#'), width,
                 done, total, double(bytes) / 1e6, double(bytes) / 1e6 / std::max(seconds, 1e-3));
      if (done == total) fmt::print(stderr, "\n");
    };
  }
  writer.write(output, options.overwrite, progress);
}

}  // namespace kiln
