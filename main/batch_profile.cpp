#include "main/batch_profile.h"

#include <fmt/format.h>

#include <algorithm>

namespace kiln {

BatchStageTotals::BatchStageTotals() : timer_(std::make_shared<StageTimer>()) {
  timer_->enabled = true;
  timer_->on_stage = [this](std::string_view stage, int, double us) { add(stage, us); };
}

void BatchStageTotals::add(std::string_view stage, double microseconds) {
  auto it = std::find_if(totals_.begin(), totals_.end(), [&](const auto& t) { return t.first == stage; });
  if (it == totals_.end()) it = totals_.insert(totals_.end(), {std::string(stage), 0.0});
  it->second += microseconds;
}

std::string BatchStageTotals::table(const BatchTally& tally, double wall_seconds) const {
  std::string out;
  if (totals_.empty()) {
    out = "profile: no stage was timed (only the CUDA batch backend times its stages)\n";
  } else {
    double sum = 0;
    for (const auto& [stage, us] : totals_) sum += us;
    out = "profile of the forward steps (each stage ends with the named tensor; layers summed):\n";
    for (const auto& [stage, us] : totals_)
      out += fmt::format("  {:<12} {:9.2f} s {:5.1f}%\n", stage, us * 1e-6, 100 * us / sum);
    out += fmt::format("  {:<12} {:9.2f} s (the stages' sum)\n", "stages", sum * 1e-6);
  }
  out += fmt::format("  {:<12} {:9.2f} s (wall, the logits' copy and launches included)\n", "forward",
                     tally.forward_seconds);
  out += fmt::format("  {:<12} {:9.2f} s (the next tokens drawn from the logits)\n", "sampling",
                     tally.sampling_seconds);
  out += fmt::format("  {:<12} {:9.2f} s (scheduling, detokenizing, output)\n", "the rest",
                     wall_seconds - tally.forward_seconds - tally.sampling_seconds);
  return out;
}

}  // namespace kiln
