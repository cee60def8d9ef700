// Nothing allocates during a forward step once the backend is built: this binary counts every operator
// new (on every thread) around steady-state decode and prefill calls.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "engine/backend.h"
#include "engine/weights.h"
#include "tests/engine/tiny_model.h"

namespace {
std::atomic<long> g_allocations{0};
}

void* operator new(std::size_t bytes) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(bytes ? bytes : 1)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t bytes, std::align_val_t align) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  const auto a = static_cast<std::size_t>(align);
  if (void* p = std::aligned_alloc(a, (bytes + a - 1) / a * a)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace kiln::test {
namespace {

TEST(CpuBackendAllocations, NoneDuringDecodeOrPrefill) {
  for (const DType dtype : {DType::F32, DType::I8}) {
    SCOPED_TRACE(testing::Message() << "dtype " << dtype_name(dtype));
    const TinyModel model = load_tiny_model("llama_gqa_tied");
    const TensorStore store(model, dtype);
    BackendOptions options;
    options.n_ctx = 256;
    options.n_threads = 2;
    options.max_batch = 32;
    auto backend = make_cpu_backend(model.config, bind_weights(model.config, store.lookup()), options);
    std::vector<int32_t> tokens(100);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t(i * 7 % 256);
    std::vector<float> logits(size_t(32 * model.config.n_vocab));
    // Warm-up: the kernels' per-thread scratch grows to its steady size on first use.
    backend->forward(tokens.data(), 32, 0, logits.data(), true);
    backend->forward(tokens.data() + 32, 1, 32, logits.data(), false);

    const long before_decode = g_allocations.load();
    for (int64_t p = 33; p < 60; ++p) backend->forward(tokens.data() + p, 1, p, logits.data(), false);
    EXPECT_EQ(g_allocations.load() - before_decode, 0) << "allocations in 27 decode steps";

    const long before_prefill = g_allocations.load();
    backend->forward(tokens.data() + 60, 32, 60, logits.data(), true);
    backend->forward(tokens.data(), 40, 0, nullptr, false);  // rewind, two chunks, cache only
    EXPECT_EQ(g_allocations.load() - before_prefill, 0) << "allocations in prefill";
  }
}

}  // namespace
}  // namespace kiln::test
