#include "main/batch_progress.h"

#include <fmt/format.h>

#include <cstdio>

namespace kiln {
namespace {

std::string duration(double seconds) {
  if (seconds < 60) return fmt::format("{:.0f} s", seconds);
  if (seconds < 3600) return fmt::format("{}m{:02}s", int(seconds / 60), int(seconds) % 60);
  return fmt::format("{}h{:02}m", int(seconds / 3600), int(seconds / 60) % 60);
}

}  // namespace

std::string progress_line(const BatchTally& t, double seconds) {
  const int64_t done_now = t.ok + t.failed;
  const int64_t done = t.resumed + done_now;
  const double rate = seconds > 0 ? double(done_now) / seconds : 0;
  const std::string eta = rate > 0 ? duration(double(t.total - done) / rate) : "?";
  return fmt::format("{}/{} | {:.2f} req/s | {:.1f} t/s | ETA {}", done, t.total, rate,
                     seconds > 0 ? double(t.generated_tokens) / seconds : 0.0, eta);
}

std::string summary_line(const BatchTally& t, double seconds) {
  return fmt::format("[batch: {} ok, {} failed, {} resumed | generated {} tokens, {:.1f} t/s | prompt {} tokens | "
                     "wall {:.1f} s, {:.1f} s of it in {} forward steps]",
                     t.ok, t.failed, t.resumed, t.generated_tokens,
                     seconds > 0 ? double(t.generated_tokens) / seconds : 0.0, t.prompt_tokens, seconds,
                     t.forward_seconds, t.steps);
}

BatchMeter::BatchMeter(bool live) : live_(live), start_(Clock::now()), last_(start_) {}

double BatchMeter::seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

void BatchMeter::update(const BatchTally& tally) {
  if (!live_ || Clock::now() - last_ < std::chrono::milliseconds(250)) return;
  last_ = Clock::now();
  fmt::print(stderr, "\r\033[K{}", progress_line(tally, seconds()));
  std::fflush(stderr);
  shown_ = true;
}

void BatchMeter::finish(const BatchTally& tally) {
  if (shown_) fmt::print(stderr, "\r\033[K");
  fmt::print(stderr, "{}\n", summary_line(tally, seconds()));
}

}  // namespace kiln
