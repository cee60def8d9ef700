// The ranks of a model split across threads of one process (the CPU backend's tensor parallelism) sum
// their partial rows in host memory: each rank adds one slice of the elements over every rank's buffer,
// in rank order, and writes the sum back to all of them, so every rank ends with the same bits.
#pragma once

#include <memory>
#include <vector>

#include "engine/tensor_shard.h"

namespace kiln {

// One communicator per rank, sharing their meeting point; rank r's runs on rank r's thread.
[[nodiscard]] std::vector<std::unique_ptr<Communicator>> make_host_communicators(int size);

}  // namespace kiln
