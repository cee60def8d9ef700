// A GPU without room for the model: the CUDA backend refuses at start-up, quickly, with the bytes it
// needs and the bytes free, instead of failing mid-run or hanging. Skips without CUDA or a GPU.
#include <gtest/gtest.h>

#include <chrono>

#include "engine/error.h"
#include "engine/kiln_file.h"
#include "tests/main/test_faults_util.h"
#ifdef KILN_HAVE_CUDA
#include "engine/cuda_backend.h"
#endif

namespace kiln {
namespace {

TEST(Faults, CudaOutOfMemoryNamesNeededAndFreeBytes) {
#ifndef KILN_HAVE_CUDA
  GTEST_SKIP() << "this kiln is built without CUDA";
#else
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU here";
  const testing::TinyModels models;
  const KilnFile file = KilnFile::open(models.kiln);
  BackendOptions options;
  options.n_ctx = (int64_t(1) << 31) - 1;  // a KV cache of about 1 TB for this model
  options.max_kv_bytes = ~uint64_t(0);     // past kiln's own cap, so the GPU's free memory decides
  const auto start = std::chrono::steady_clock::now();
  try {
    (void)make_cuda_backend(file, options);
    ADD_FAILURE() << "a 1 TB KV cache fitted on the GPU";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("of GPU memory"), std::string::npos) << message;
    EXPECT_NE(message.find("KV cache for 2147483647 positions"), std::string::npos) << message;
    EXPECT_NE(message.find(" free of "), std::string::npos) << message;
    EXPECT_NE(message.find("use a smaller context (-c)"), std::string::npos) << message;
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 30.0);
  // And the GPU is still usable: a model of a normal context loads after the refusal.
  options.n_ctx = 64;
  EXPECT_NO_THROW((void)make_cuda_backend(file, options));
#endif
}

}  // namespace
}  // namespace kiln
