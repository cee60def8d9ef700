#include "main/bench_profile.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "engine/error.h"
#include "main/bench_memory.h"

namespace kiln {
namespace {

// Stages are named by the on_tensor names that end them (engine/backend.h). A group sums the stages that
// make one fused step of the backend and names the weights (by kind, every layer's) it reads; "kv read",
// "kv write", "embedding row" and "head" stand for the KV cache, one embedding row and the LM head matrix.
struct StageGroup {
  std::string_view label;
  std::vector<std::string_view> ends;
  std::vector<std::string_view> reads;
};

const std::vector<StageGroup>& groups_of(std::string_view backend) {
  // The CUDA backend fuses each norm into the GEMV that follows it and appends K and V in the rotary kernel.
  static const std::vector<StageGroup> cuda = {
      {"embedding", {"token_embd"}, {"embedding row"}},
      {"norm + QKV", {"attn_norm", "qkv"}, {"attn_norm.weight", "attn_norm.bias", "attn_qkv.weight", "attn_qkv.bias"}},
      {"rotary + KV append", {"q", "k"}, {"kv write"}},
      {"attention", {"attn"}, {"kv read"}},
      {"out proj", {"attn_out"}, {"attn_out.weight"}},
      {"residual + norm + MLP up", {"ffn_norm"}, {"attn_out.bias", "ffn_norm.weight", "ffn_norm.bias", "ffn_up.weight", "ffn_up.bias"}},
      {"activation", {"ffn_act"}, {}},
      {"down + residual", {"layer_out"}, {"ffn_down.weight", "ffn_down.bias"}},
      {"all-reduce (-tp)", {"all_reduce"}, {}},
      {"LM head", {"result_norm", "logits"}, {"output_norm.weight", "output_norm.bias", "head"}},
  };
  // The CPU backend runs each norm on its own and appends K and V just before the attention.
  static const std::vector<StageGroup> cpu = {
      {"embedding", {"token_embd"}, {"embedding row"}},
      {"norm + QKV", {"attn_norm", "qkv"}, {"attn_norm.weight", "attn_norm.bias", "attn_qkv.weight", "attn_qkv.bias"}},
      {"rotary", {"q", "k"}, {}},
      {"KV append + attention", {"attn"}, {"kv write", "kv read"}},
      {"out proj", {"attn_out"}, {"attn_out.weight"}},
      {"residual + norm", {"ffn_norm"}, {"attn_out.bias", "ffn_norm.weight", "ffn_norm.bias"}},
      {"MLP up + activation", {"ffn_act"}, {"ffn_up.weight", "ffn_up.bias"}},
      {"down + residual", {"layer_out"}, {"ffn_down.weight", "ffn_down.bias"}},
      {"LM head", {"result_norm", "logits"}, {"output_norm.weight", "output_norm.bias", "head"}},
  };
  return backend == "CUDA" ? cuda : cpu;
}

// "blk.3.ffn_up.weight" -> "ffn_up.weight".
std::string kind_of(const std::string& name) {
  if (!name.starts_with("blk.")) return name;
  const size_t dot = name.find('.', 4);
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

// Bytes a decode step at `position` reads for each name a group's `reads` may hold.
std::map<std::string, double> bytes_read(const KilnFile& file, int64_t position, uint64_t kv_element_bytes) {
  std::map<std::string, double> out;
  for (const TensorView& t : file.tensors())
    if (t.dtype != DType::U8) out[kind_of(t.name)] += double(tensor_bytes(t));
  const ModelConfig& c = file.config();
  const double kv_row = double(kv_bytes_per_position(c, kv_element_bytes));  // every layer's K and V of one position
  out["kv write"] = kv_row;
  out["kv read"] = kv_row * double(position + 1);
  if (const TensorView* embd = file.find("token_embd.weight")) {
    out["embedding row"] = double(tensor_bytes(*embd)) / double(embd->rows());
    out["head"] = c.tied_embeddings ? double(tensor_bytes(*embd)) : 0;
  }
  out["head"] += out["output.weight"] + out["output_proj.weight"] + out["output.bias"];
  return out;
}

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

}  // namespace

struct StageProfiler::Clock {
  std::chrono::steady_clock::time_point last;
};

StageProfiler::StageProfiler(std::string_view backend_name, uint64_t kv_element_bytes)
    : backend_(backend_name), kv_element_bytes_(kv_element_bytes), timer_(std::make_shared<StageTimer>()), clock_(std::make_shared<Clock>()) {
  timer_->on_stage = [this](std::string_view stage, int, double us) {
    if (!steps_.empty()) steps_.back()[std::string(stage)] += us;
  };
}

TensorCallback StageProfiler::host_clock() const {
  return [timer = timer_, clock = clock_](std::string_view name, int layer, const float*, int64_t) {
    if (!timer->enabled) return;
    const auto now = std::chrono::steady_clock::now();
    timer->on_stage(name, layer, std::chrono::duration<double, std::micro>(now - clock->last).count());
    clock->last = now;
  };
}

std::vector<StageProfile> StageProfiler::profile(const std::function<void()>& step, int n_steps,
                                                 const KilnFile& file, int64_t position) {
  KILN_CHECK(n_steps >= 1, "a profile needs at least one step");
  steps_.clear();
  step();  // warm-up, untimed
  timer_->enabled = true;
  try {
    for (int i = 0; i < n_steps; ++i) {
      steps_.emplace_back();
      clock_->last = std::chrono::steady_clock::now();
      step();
    }
  } catch (...) {
    timer_->enabled = false;  // later steps run as usual
    throw;
  }
  timer_->enabled = false;

  const std::map<std::string, double> bytes = bytes_read(file, position, kv_element_bytes_);
  std::vector<StageProfile> out;
  std::vector<std::string_view> grouped;
  for (const StageGroup& g : groups_of(backend_)) {
    std::vector<double> per_step;
    for (const auto& times : steps_) {
      double us = 0;
      for (std::string_view end : g.ends)
        if (auto it = times.find(std::string(end)); it != times.end()) us += it->second;
      per_step.push_back(us);
    }
    StageProfile s{std::string(g.label), median(per_step), 0};
    for (std::string_view kind : g.reads)
      if (auto it = bytes.find(std::string(kind)); it != bytes.end()) s.bytes += it->second;
    out.push_back(s);
    grouped.insert(grouped.end(), g.ends.begin(), g.ends.end());
  }
  // Stages no group names (a family's extra norms, say) stay visible.
  std::vector<double> other;
  for (const auto& times : steps_) {
    double us = 0;
    for (const auto& [name, t] : times)
      if (std::find(grouped.begin(), grouped.end(), name) == grouped.end()) us += t;
    other.push_back(us);
  }
  if (median(other) > 0) out.push_back({"other", median(other), 0});
  return out;
}

std::string profile_markdown(const std::vector<StageProfile>& stages, std::string_view title) {
  double total_us = 0, total_bytes = 0;
  for (const auto& s : stages) total_us += s.us, total_bytes += s.bytes;
  std::string out = fmt::format("\n{}\n\n| stage | µs | share | MB read | GB/s |\n| --- | ---: | ---: | ---: | ---: |\n", title);
  for (const auto& s : stages)
    out += fmt::format("| {} | {:.1f} | {:.1f}% | {:.4g} | {} |\n", s.stage, s.us, total_us > 0 ? 100 * s.us / total_us : 0,
                       s.bytes / 1e6, s.bytes > 0 ? fmt::format("{:.1f}", s.gbs()) : "");
  out += fmt::format("| total | {:.1f} | 100% | {:.4g} | {:.1f} |\n", total_us, total_bytes / 1e6,
                     total_us > 0 ? total_bytes / total_us / 1e3 : 0);
  return out;
}

nlohmann::json profile_json(const std::vector<StageProfile>& stages) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : stages) out.push_back({{"stage", s.stage}, {"us", s.us}, {"bytes", s.bytes}, {"gbs", s.gbs()}});
  return out;
}

}  // namespace kiln
