// kiln bench --profile: where one decode step's time goes. Each stage (a fused kernel on CUDA, a kernel
// call on the CPU) is timed, summed over layers, and set against the bytes it reads to give its GB/s.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "engine/kiln_file.h"

namespace kiln {

struct StageProfile {
  std::string stage;  // what runs in it, e.g. "norm + QKV"
  double us = 0;      // summed over layers; the median over the profiled steps
  double bytes = 0;   // weights and KV cache it reads (and KV it writes)
  double gbs() const { return us > 0 ? bytes / us / 1e3 : 0; }
};

class StageProfiler {
 public:
  // backend_name: "CPU" or "CUDA" (how its stages group); kv_element_bytes: 4 for an f32 KV cache, 2 for f16.
  StageProfiler(std::string_view backend_name, uint64_t kv_element_bytes);

  // Give both to the backend's options: the CUDA backend reports through the timer; the CPU backend's
  // stage ends reach the host clock (on_tensor), which times them.
  const std::shared_ptr<StageTimer>& timer() const { return timer_; }
  TensorCallback host_clock() const;

  // Runs step() once to warm up, then n_steps times with the timer on; each call must run one decode step.
  // position: the step's position (it reads position + 1 cached keys and values).
  std::vector<StageProfile> profile(const std::function<void()>& step, int n_steps, const KilnFile& file,
                                    int64_t position);

 private:
  struct Clock;
  std::string backend_;
  uint64_t kv_element_bytes_;
  std::shared_ptr<StageTimer> timer_;
  std::shared_ptr<Clock> clock_;
  std::vector<std::map<std::string, double>> steps_;  // per step: stage end name -> µs, layers summed
};

// The profile as markdown (a table, then totals) and as a JSON array of {stage, us, bytes, gbs}.
std::string profile_markdown(const std::vector<StageProfile>& stages, std::string_view title);
nlohmann::json profile_json(const std::vector<StageProfile>& stages);

}  // namespace kiln
