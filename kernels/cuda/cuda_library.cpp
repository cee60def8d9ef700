#include "kernels/cuda/cuda_library.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <string>

#include "engine/error.h"

namespace kiln::cuda {
namespace {

// The folder of the CUDA runtime this process runs with: the toolkit's libraries ship beside it.
std::string runtime_folder() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&cudaGetDeviceCount), &info) == 0 || info.dli_fname == nullptr) return {};
  const std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
}

}  // namespace

void* open_cuda_library(const char* name) {
  void* handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const std::string beside_runtime = runtime_folder() + name;
    handle = dlopen(beside_runtime.c_str(), RTLD_NOW | RTLD_LOCAL);
  }
  return handle;
}

void* library_function(void* handle, const char* library, const char* name, const char* remedy) {
  void* symbol = dlsym(handle, name);
  if (symbol == nullptr) fail("{} lacks the function {}: {}", library, name, remedy);
  return symbol;
}

}  // namespace kiln::cuda
