// cuBLAS is loaded on first use, not at start-up: a CPU run of a CUDA build never maps it.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

#include "kernels/cuda/cublas_loader.h"
#include "kernels/cuda/matmul.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace kiln {
namespace {

bool mapped(const std::string& library) {
  std::ifstream maps("/proc/self/maps");
  std::stringstream text;
  text << maps.rdbuf();
  return text.str().find(library) != std::string::npos;
}

TEST(CublasLoader, NotMappedUntilAGemmContextIsMade) {
  ASSERT_TRUE(std::ifstream("/proc/self/maps").good()) << "needs /proc/self/maps";
  EXPECT_FALSE(cuda::cublas_loaded());
  EXPECT_FALSE(mapped("libcublas")) << "cuBLAS was loaded at start-up";
  KILN_REQUIRE_GPU();
  const size_t bytes = cuda::gemm_workspace_bytes(16, 64, 0);
  cuda::DeviceBuffer workspace(bytes);
  cuda::GemmContext gemm(workspace.data(), bytes, 16, 64, 0);
  EXPECT_TRUE(cuda::cublas_loaded());
  EXPECT_TRUE(mapped("libcublasLt")) << "cuBLAS loads its Lt library with it";
}

}  // namespace
}  // namespace kiln
