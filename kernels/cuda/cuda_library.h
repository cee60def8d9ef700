// Opens a shared library of the CUDA toolkit at run time (cuBLAS, NCCL), so kiln links none of them.
#pragma once

namespace kiln::cuda {

// dlopen(name) from the library search path, else from the folder of the CUDA runtime kiln runs with;
// nullptr when neither has it (dlerror() says why). The handle stays open for the life of the process.
void* open_cuda_library(const char* name);

// The address of function `name` in the opened `library`; throws kiln::Error "<library> lacks the function
// <name>: <remedy>" when it has none.
void* library_function(void* handle, const char* library, const char* name, const char* remedy);

// library_function, cast to the type of `out`.
template <typename Fn>
void resolve_function(void* handle, const char* library, const char* name, const char* remedy, Fn& out) {
  out = reinterpret_cast<Fn>(library_function(handle, library, name, remedy));
}

}  // namespace kiln::cuda
