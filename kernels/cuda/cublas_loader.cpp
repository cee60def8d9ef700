#include "kernels/cuda/cublas_loader.h"

#include <dlfcn.h>

#include <atomic>

#include "engine/error.h"
#include "kernels/cuda/cuda_library.h"

namespace kiln::cuda {
namespace {

#define KILN_STR2(x) #x
#define KILN_STR(x) KILN_STR2(x)
constexpr const char* kLibrary = "libcublas.so." KILN_STR(CUBLAS_VER_MAJOR);

std::atomic<bool> loaded{false};

void* open_library() {
  void* handle = open_cuda_library(kLibrary);
  if (handle == nullptr)
    fail("cannot load cuBLAS ({}): {}. Install the CUDA toolkit's cuBLAS {} (or add its folder to "
         "LD_LIBRARY_PATH), or run on the CPU with --device cpu",
         kLibrary, dlerror(), CUBLAS_VER_MAJOR);
  return handle;
}

template <typename Fn>
void resolve(void* handle, const char* name, Fn& out) {
  resolve_function(handle, kLibrary, name, "install cuBLAS " KILN_STR(CUBLAS_VER_MAJOR), out);
}

CublasApi load() {
  void* handle = open_library();  // kept open for the life of the process
  CublasApi api{};
  resolve(handle, "cublasCreate_v2", api.create);
  resolve(handle, "cublasDestroy_v2", api.destroy);
  resolve(handle, "cublasSetStream_v2", api.set_stream);
  resolve(handle, "cublasSetWorkspace_v2", api.set_workspace);
  resolve(handle, "cublasGemmEx", api.gemm_ex);
  resolve(handle, "cublasGemmStridedBatchedEx", api.gemm_strided_batched_ex);
  resolve(handle, "cublasGetStatusString", api.status_string);
  loaded = true;
  return api;
}

}  // namespace

const CublasApi& cublas() {
  static const CublasApi api = load();  // a failed load throws and is retried by the next call
  return api;
}

bool cublas_loaded() { return loaded; }

}  // namespace kiln::cuda
