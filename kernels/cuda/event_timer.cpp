#include "kernels/cuda/event_timer.h"

#include "kernels/cuda/cuda_util.h"

namespace kiln::cuda {

EventTimer::~EventTimer() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

void EventTimer::start(cudaStream_t stream) {
  used_ = 0;
  record(stream);
}

void EventTimer::mark(cudaStream_t stream) { record(stream); }

void EventTimer::record(cudaStream_t stream) {
  if (used_ == events_.size()) {
    cudaEvent_t e = nullptr;
    KILN_CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
  }
  KILN_CUDA_CHECK(cudaEventRecord(events_[used_++], stream));
}

std::vector<float> EventTimer::elapsed_ms() const {
  std::vector<float> out;
  if (used_ == 0) return out;
  KILN_CUDA_CHECK(cudaEventSynchronize(events_[used_ - 1]));
  for (size_t i = 1; i < used_; ++i) {
    float ms = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i - 1], events_[i]));
    out.push_back(ms);
  }
  return out;
}

}  // namespace kiln::cuda
