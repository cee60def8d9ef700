// kiln batch's progress on stderr: a line refreshed in place at most four times a second when stderr
// is a terminal, and a summary at the end, always.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kiln {

struct BatchTally {
  int64_t total = 0;       // input lines
  int64_t resumed = 0;     // records an earlier run left in OUT
  int64_t ok = 0;          // finished in this run
  int64_t failed = 0;      // error records written in this run
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  int64_t steps = 0;            // forward steps
  double forward_seconds = 0;   // of the wall time, in the forward steps
  double sampling_seconds = 0;  // of the wall time, drawing tokens from the steps' logits
};

// "37/100 | 2.1 req/s | 140.3 t/s | ETA 30 s" (done counts resumed records).
[[nodiscard]] std::string progress_line(const BatchTally& tally, double seconds);
// "[batch: 98 ok, 2 failed, 10 resumed | generated 6272 tokens, 142.7 t/s | prompt 1650 tokens | wall 43.9 s,
// 40.2 s of it in 310 forward steps]"
[[nodiscard]] std::string summary_line(const BatchTally& tally, double seconds);

class BatchMeter {
 public:
  explicit BatchMeter(bool live);  // live: refresh a line (stderr is a terminal)
  void update(const BatchTally& tally);
  void finish(const BatchTally& tally);
  double seconds() const;  // since the meter started

 private:
  using Clock = std::chrono::steady_clock;
  bool live_;
  Clock::time_point start_, last_;
  bool shown_ = false;
};

}  // namespace kiln
