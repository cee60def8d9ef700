// Times a stream's work between points with CUDA events (kiln bench --profile): start(), mark() after each
// piece is launched, then elapsed_ms() waits for the stream and gives each piece's time in order.
#pragma once

#include <cuda_runtime_api.h>

#include <vector>

namespace kiln::cuda {

class EventTimer {
 public:
  EventTimer() = default;
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  void start(cudaStream_t stream);  // forgets earlier marks
  void mark(cudaStream_t stream);
  // [marks] milliseconds from the previous mark (or the start) to each mark; waits for the last one.
  std::vector<float> elapsed_ms() const;

 private:
  void record(cudaStream_t stream);
  std::vector<cudaEvent_t> events_;  // created on first use, reused by later steps
  size_t used_ = 0;
};

}  // namespace kiln::cuda
