// The flags every model-running command shares (llama.cpp's names), declared once, and the loading of a
// model with them: the file, its tokenizer and a backend.
#pragma once

#include <memory>
#include <string>

#include "main/cli.h"

#include "engine/backend.h"
#include "engine/kiln_file.h"
#include "engine/sampler.h"
#include "kernels/cuda/kv_dtype.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

void add_model_options(cxxopts::Options& options);     // -m -c -t --device -ngl -tp
void add_sampling_options(cxxopts::Options& options);  // --temp --top-k ... -s
void add_chat_options(cxxopts::Options& options);      // -sys --chat-template

[[nodiscard]] SamplerParams sampling_from(const cxxopts::ParseResult& args);

struct LoadedModel {
  KilnFile file;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Backend> backend;
  std::string chat_template;  // the model's template text, verbatim
};

// Opens -m, builds the tokenizer and the backend. Throws kiln::Error with what to do.
// --device: "cpu", "cuda", or "auto" (or empty): cuda when this kiln has CUDA and a GPU is present.
[[nodiscard]] std::string choose_device(const std::string& requested);

// kv_dtype: the GPU's KV cache type (--cache-type); the CPU's is f32. tensor_parallel: ranks the model is
// split over (-tp). persistent_decode: a GPU decode step may run as one kernel (not --no-persistent).
[[nodiscard]] std::unique_ptr<Backend> make_backend_on(const std::string& device, const KilnFile& file,
                                                       const BackendOptions& options, cuda::KvDType kv_dtype,
                                                       int tensor_parallel, bool persistent_decode);

// -tp: the tensor-parallel size. Throws kiln::Error outside [1, 64].
[[nodiscard]] int tensor_parallel_from(const cxxopts::ParseResult& args);

// --cache-type for `device` (from choose_device): f32, f16 or fp8 on a GPU; the CPU keeps f32, and says so
// on stderr when the option asked for another type. Throws kiln::Error for an unknown type on any device.
[[nodiscard]] cuda::KvDType kv_dtype_from(const cxxopts::ParseResult& args, const std::string& device);

[[nodiscard]] LoadedModel load_model(const cxxopts::ParseResult& args);

// The chat template: --chat-template NAME, else the one the model's template string names.
[[nodiscard]] ChatTemplate chat_template_from(const cxxopts::ParseResult& args, const LoadedModel& model);

}  // namespace kiln
