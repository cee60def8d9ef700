#include "engine/host_communicator.h"

#include <barrier>

namespace kiln {
namespace {

struct Meeting {
  explicit Meeting(int size) : size(size), buffers(size_t(size)), barrier(size) {}
  const int size;
  std::vector<float*> buffers;  // each rank's data during a call
  std::barrier<> barrier;
};

class HostCommunicator final : public Communicator {
 public:
  HostCommunicator(std::shared_ptr<Meeting> meeting, int rank) : meeting_(std::move(meeting)), rank_(rank) {}

  void all_reduce_sum(float* data, int64_t n) override {
    Meeting& m = *meeting_;
    m.buffers[size_t(rank_)] = data;
    m.barrier.arrive_and_wait();  // every buffer is published
    const int64_t begin = n * rank_ / m.size, end = n * (rank_ + 1) / m.size;
    for (int64_t i = begin; i < end; ++i) {
      float sum = 0;
      for (float* b : m.buffers) sum += b[i];
      for (float* b : m.buffers) b[i] = sum;
    }
    m.barrier.arrive_and_wait();  // every slice is summed before any rank reads its buffer or calls again
  }

 private:
  std::shared_ptr<Meeting> meeting_;
  int rank_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_host_communicators(int size) {
  auto meeting = std::make_shared<Meeting>(size);
  std::vector<std::unique_ptr<Communicator>> ranks;
  for (int r = 0; r < size; ++r) ranks.push_back(std::make_unique<HostCommunicator>(meeting, r));
  return ranks;
}

}  // namespace kiln
