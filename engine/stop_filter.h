// Stop strings over streamed text: holds back the tail that could still become a stop string, so
// the text passed on never contains one or its start. Shared by the single and the batched loop.
#pragma once

#include <algorithm>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln {

class StopFilter {
 public:
  using Sink = std::function<void(std::string_view text)>;
  StopFilter(std::vector<std::string> stops, Sink sink) : stops_(std::move(stops)), sink_(std::move(sink)) {}

  // Returns true when a stop string completed; the text before it has been passed on.
  bool push(std::string_view text) {
    pending_ += text;
    for (const auto& stop : stops_) {
      if (stop.empty()) continue;
      if (size_t at = pending_.find(stop); at != std::string::npos) {
        emit(pending_.substr(0, at));
        pending_.clear();
        return true;
      }
    }
    size_t keep = 0;  // the longest suffix of pending_ that is a prefix of a stop string
    for (const auto& stop : stops_)
      for (size_t n = std::min(stop.size() - (stop.empty() ? 0 : 1), pending_.size()); n > keep; --n)
        if (pending_.compare(pending_.size() - n, n, stop, 0, n) == 0) {
          keep = n;
          break;
        }
    emit(pending_.substr(0, pending_.size() - keep));
    pending_.erase(0, pending_.size() - keep);
    return false;
  }
  // Passes on what is held back; call when the stream ends without a stop string.
  void flush() {
    emit(pending_);
    pending_.clear();
  }

 private:
  void emit(const std::string& text) {
    if (!text.empty() && sink_) sink_(text);
  }
  std::vector<std::string> stops_;
  Sink sink_;
  std::string pending_;
};

}  // namespace kiln
