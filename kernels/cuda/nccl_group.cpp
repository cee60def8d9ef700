#include "kernels/cuda/nccl_group.h"

#include <dlfcn.h>
#include <nccl.h>

#include <cstdlib>
#include <vector>

#include "engine/error.h"
#include "kernels/cuda/cuda_library.h"
#include "kernels/cuda/cuda_util.h"

namespace kiln::cuda {
namespace {

#define KILN_STR2(x) #x
#define KILN_STR(x) KILN_STR2(x)
constexpr const char* kLibrary = "libnccl.so." KILN_STR(NCCL_MAJOR);

// The NCCL entry points kiln calls, resolved from the shared library.
struct NcclApi {
  decltype(&ncclCommInitAll) comm_init_all;
  decltype(&ncclCommDestroy) comm_destroy;
  decltype(&ncclAllReduce) all_reduce;
  decltype(&ncclGetErrorString) error_string;
  decltype(&ncclGroupStart) group_start;
  decltype(&ncclGroupEnd) group_end;
};

template <typename Fn>
void resolve(void* handle, const char* name, Fn& out) {
  resolve_function(handle, kLibrary, name, "install NCCL " KILN_STR(NCCL_MAJOR), out);
}

NcclApi load() {
  void* handle = open_cuda_library(kLibrary);
  if (handle == nullptr)
    fail("cannot load NCCL ({}): {}. Install NCCL {} (libnccl2) or add its folder to LD_LIBRARY_PATH, or run "
         "the model on one GPU without -tp",
         kLibrary, dlerror(), NCCL_MAJOR);
  NcclApi api{};
  resolve(handle, "ncclCommInitAll", api.comm_init_all);
  resolve(handle, "ncclCommDestroy", api.comm_destroy);
  resolve(handle, "ncclAllReduce", api.all_reduce);
  resolve(handle, "ncclGetErrorString", api.error_string);
  resolve(handle, "ncclGroupStart", api.group_start);
  resolve(handle, "ncclGroupEnd", api.group_end);
  return api;
}

const NcclApi& nccl() {
  static const NcclApi api = load();  // a failed load throws and is retried by the next call
  return api;
}

void check(ncclResult_t result, const char* what) {
  if (result != ncclSuccess) fail("NCCL {} failed: {}", what, nccl().error_string(result));
}

}  // namespace

struct NcclGroup::State {
  ~State() {
    for (ncclComm_t comm : comms)
      if (comm != nullptr) nccl().comm_destroy(comm);
  }
  std::vector<ncclComm_t> comms;
};

NcclGroup::NcclGroup(int n_devices) : state_(std::make_unique<State>()) {
  KILN_CHECK(n_devices >= 1, "an NCCL group needs a GPU, not {}", n_devices);
  setenv("NCCL_NVLS_ENABLE", "0", 0);  // read when the communicators are made; the user's setting wins
  std::vector<int> devices(static_cast<size_t>(n_devices));
  for (int d = 0; d < n_devices; ++d) devices[size_t(d)] = d;
  state_->comms.resize(static_cast<size_t>(n_devices));
  check(nccl().comm_init_all(state_->comms.data(), n_devices, devices.data()), "communicator set-up");
  // One sum now sets up NCCL's connections, which a sum first met inside a CUDA graph capture could not.
  std::vector<DeviceBuffer> one(static_cast<size_t>(n_devices));
  std::vector<std::unique_ptr<CudaStream>> streams(static_cast<size_t>(n_devices));
  for (int d = 0; d < n_devices; ++d) {
    KILN_CUDA_CHECK(cudaSetDevice(d));
    one[size_t(d)] = DeviceBuffer(sizeof(float));
    KILN_CUDA_CHECK(cudaMemset(one[size_t(d)].data(), 0, sizeof(float)));
    KILN_CUDA_CHECK(cudaDeviceSynchronize());  // the legacy stream's memset before the non-blocking stream
    streams[size_t(d)] = std::make_unique<CudaStream>();
  }
  check(nccl().group_start(), "group start");
  for (int d = 0; d < n_devices; ++d)
    check(nccl().all_reduce(one[size_t(d)].data(), one[size_t(d)].data(), 1, ncclFloat32, ncclSum,
                            state_->comms[size_t(d)], streams[size_t(d)]->get()),
          "all-reduce");
  check(nccl().group_end(), "group end");
  for (int d = 0; d < n_devices; ++d) {
    KILN_CUDA_CHECK(cudaSetDevice(d));
    streams[size_t(d)]->synchronize();
  }
  KILN_CUDA_CHECK(cudaSetDevice(0));
}

NcclGroup::~NcclGroup() = default;

int NcclGroup::size() const { return int(state_->comms.size()); }

void NcclGroup::all_reduce_sum(int rank, float* data, int64_t n, cudaStream_t stream) const {
  KILN_CHECK(rank >= 0 && rank < size() && n >= 0, "NCCL all-reduce of {} floats on rank {} of {}", n, rank, size());
  check(nccl().all_reduce(data, data, size_t(n), ncclFloat32, ncclSum, state_->comms[size_t(rank)], stream),
        "all-reduce");
}

}  // namespace kiln::cuda
