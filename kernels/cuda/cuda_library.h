// Opens a shared library of the CUDA toolkit at run time (cuBLAS, NCCL), so kiln links none of them.
#pragma once

namespace kiln::cuda {

// dlopen(name) from the library search path, else from the folder of the CUDA runtime kiln runs with;
// nullptr when neither has it (dlerror() says why). The handle stays open for the life of the process.
void* open_cuda_library(const char* name);

}  // namespace kiln::cuda
