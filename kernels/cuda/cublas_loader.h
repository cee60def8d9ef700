// cuBLAS, loaded on first use instead of linked. A linked cuBLAS is loaded by every run of kiln, the CPU
// ones too, and its loading alone makes ~220 MB resident (cuBLASLt's static data and the code pages its
// start-up touches): more than SmolLM2's weights. Loaded here, only a GEMM context pays for it.
#pragma once

#include <cublas_v2.h>

#include "engine/error.h"

// Throws kiln::Error naming the call when a cuBLAS call fails.
#define KILN_CUBLAS_CHECK(call)                                                                            \
  do {                                                                                                     \
    const cublasStatus_t kiln_status_ = (call);                                                            \
    if (kiln_status_ != CUBLAS_STATUS_SUCCESS)                                                             \
      ::kiln::fail("cuBLAS error {} in `{}` at {}:{}", ::kiln::cuda::cublas().status_string(kiln_status_), \
                   #call, __FILE__, __LINE__);                                                             \
  } while (0)

namespace kiln::cuda {

// The cuBLAS entry points kiln calls, resolved from the shared library.
struct CublasApi {
  decltype(&cublasCreate_v2) create;
  decltype(&cublasDestroy_v2) destroy;
  decltype(&cublasSetStream_v2) set_stream;
  decltype(&cublasSetWorkspace_v2) set_workspace;
  // cublasGemmEx has C++ overloads: the C entry point's type, spelled out.
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int m, int n, int k,
                            const void* alpha, const void* a, cudaDataType a_type, int lda, const void* b,
                            cudaDataType b_type, int ldb, const void* beta, void* c, cudaDataType c_type, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo);
  cublasStatus_t (*gemm_strided_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int m, int n,
                                            int k, const void* alpha, const void* a, cudaDataType a_type, int lda,
                                            long long stride_a, const void* b, cudaDataType b_type, int ldb,
                                            long long stride_b, const void* beta, void* c, cudaDataType c_type,
                                            int ldc, long long stride_c, int batch, cublasComputeType_t compute,
                                            cublasGemmAlgo_t algo);
  decltype(&cublasGetStatusString) status_string;
};

// Loads libcublas.so.<major of the headers> once (thread-safe): from the library search path, else from
// the folder of the CUDA runtime kiln runs with. Throws kiln::Error saying what to install when it fails.
const CublasApi& cublas();

// Whether cuBLAS is loaded in this process (tests: the CPU paths must not load it).
bool cublas_loaded();

}  // namespace kiln::cuda
