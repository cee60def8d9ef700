// kiln batch --profile: where a whole run's forward time went. The CUDA batch backend times each stage of
// every step (a stage ends with the tensor it names; layers summed); the totals print at the end beside
// the forward steps' wall time and the host's time outside them (sampling, scheduling, output).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/backend.h"
#include "main/batch_progress.h"

namespace kiln {

class BatchStageTotals {
 public:
  BatchStageTotals();
  BatchStageTotals(const BatchStageTotals&) = delete;  // the timer calls back into this one
  BatchStageTotals& operator=(const BatchStageTotals&) = delete;
  // Give it to the backend's options; enabled from the start.
  const std::shared_ptr<StageTimer>& timer() const { return timer_; }
  void add(std::string_view stage, double microseconds);
  // A table: each stage's seconds and share of the stages' sum, in the order they first ran, then the
  // forward steps' wall seconds, the sampling's, and the rest of the run's.
  std::string table(const BatchTally& tally, double wall_seconds) const;

 private:
  std::shared_ptr<StageTimer> timer_;
  std::vector<std::pair<std::string, double>> totals_;  // stage -> µs
};

}  // namespace kiln
