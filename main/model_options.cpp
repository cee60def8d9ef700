#include "main/model_options.h"

#include <random>

#include "engine/error.h"
#include "engine/tensor_parallel_backend.h"
#ifdef KILN_HAVE_CUDA
#include "engine/cuda_backend.h"
#endif

namespace kiln {

void add_model_options(cxxopts::Options& options) {
  options.add_options("model")("m,model", "the .kiln model file", cxxopts::value<std::string>())(
      "c,ctx-size", "context size in tokens (0: the model's, at most 4096)",
      cxxopts::value<int64_t>()->default_value("0"))(
      "t,threads", "CPU threads (0: all cores)", cxxopts::value<int>()->default_value("0"))(
      "device", "auto, cpu or cuda (auto: cuda when this kiln has CUDA and a GPU is present, else cpu)",
      cxxopts::value<std::string>()->default_value("auto"))(
      "ngl,n-gpu-layers", "accepted for llama.cpp compatibility; kiln runs every layer on the chosen device",
      cxxopts::value<int>()->default_value("-1"))(
      "cache-type",
      "the GPU's KV cache type: f16 (half the bytes attention reads), fp8 (e4m3: a quarter; 3 mantissa bits) or f32 "
      "(the CPU keeps f32)",
      cxxopts::value<std::string>()->default_value("f16"))(
      "tensor-parallel,tp",
      "-tp N: split the model by heads over N ranks (at most its key/value heads): GPUs 0 .. N-1, or on the "
      "CPU N groups of threads",
      cxxopts::value<int>()->default_value("1"))(
      "no-persistent",
      "run a GPU decode step's kernels one by one rather than as one persistent kernel (for comparison: small "
      "models decode faster in one)");
}

int tensor_parallel_from(const cxxopts::ParseResult& args) {
  const int size = args["tensor-parallel"].as<int>();
  KILN_CHECK(size >= 1 && size <= 64, "-tp {} must be a rank count from 1 to 64", size);
  return size;
}

cuda::KvDType kv_dtype_from(const cxxopts::ParseResult& args, const std::string& device) {
  const std::string type = args["cache-type"].as<std::string>();
  for (cuda::KvDType dtype : {cuda::KvDType::F32, cuda::KvDType::F16, cuda::KvDType::F8}) {
    if (type != cuda::kv_dtype_name(dtype)) continue;
    if (device == "cuda") return dtype;
    if (args.count("cache-type") > 0 && dtype != cuda::KvDType::F32)
      fmt::print(stderr, "note: --cache-type {} sets a GPU's KV cache; the CPU keeps its cache in f32\n", type);
    return cuda::KvDType::F32;
  }
  fail("--cache-type '{}' is not f16, fp8 or f32", type);
}

void add_sampling_options(cxxopts::Options& options) {
  options.add_options("sampling")("temp", "temperature; 0 is greedy", cxxopts::value<float>()->default_value("0.8"))(
      "top-k", "keep the k most likely tokens (0: off)", cxxopts::value<int>()->default_value("40"))(
      "top-p", "keep the smallest set with this probability (1: off)", cxxopts::value<float>()->default_value("0.95"))(
      "min-p", "drop tokens less likely than this times the best (0: off)",
      cxxopts::value<float>()->default_value("0.05"))(
      "repeat-penalty", "penalise repeated tokens (1: off)", cxxopts::value<float>()->default_value("1.0"))(
      "repeat-last-n", "tokens the penalties look back over", cxxopts::value<int>()->default_value("64"))(
      "frequency-penalty", "subtract per occurrence", cxxopts::value<float>()->default_value("0"))(
      "presence-penalty", "subtract once if present", cxxopts::value<float>()->default_value("0"))(
      "s,seed", "random seed (-1: random)", cxxopts::value<int64_t>()->default_value("-1"));
}

void add_chat_options(cxxopts::Options& options) {
  options.add_options("chat")("sys,system", "system prompt", cxxopts::value<std::string>())(
      "chat-template", "chatml, llama2, llama3, zephyr or mistral (default: the model's)",
      cxxopts::value<std::string>());
}

SamplerParams sampling_from(const cxxopts::ParseResult& args) {
  SamplerParams p;
  p.temperature = args["temp"].as<float>();
  p.top_k = args["top-k"].as<int>();
  p.top_p = args["top-p"].as<float>();
  p.min_p = args["min-p"].as<float>();
  p.repeat_penalty = args["repeat-penalty"].as<float>();
  p.penalty_last_n = args["repeat-last-n"].as<int>();
  p.frequency_penalty = args["frequency-penalty"].as<float>();
  p.presence_penalty = args["presence-penalty"].as<float>();
  const int64_t seed = args["seed"].as<int64_t>();
  p.seed = seed < 0 ? std::random_device{}() : uint64_t(seed);
  p.validate();
  return p;
}

std::string choose_device(const std::string& requested) {
  const bool automatic = requested.empty() || requested == "auto";
  KILN_CHECK(automatic || requested == "cpu" || requested == "cuda", "--device '{}' is not auto, cpu or cuda",
             requested);
#ifdef KILN_HAVE_CUDA
  if (automatic) return cuda_available() ? "cuda" : "cpu";
  KILN_CHECK(requested == "cpu" || cuda_available(), "no CUDA GPU is available: use --device cpu");
  return requested;
#else
  KILN_CHECK(requested != "cuda", "this kiln was built without CUDA: use --device cpu, or rebuild with -DKILN_CUDA=ON");
  return "cpu";
#endif
}

std::unique_ptr<Backend> make_backend_on(const std::string& device, const KilnFile& file,
                                         const BackendOptions& options, cuda::KvDType kv_dtype, int tensor_parallel,
                                         bool persistent_decode) {
#ifdef KILN_HAVE_CUDA
  CudaOptions cuda;
  cuda.kv_dtype = kv_dtype;
  cuda.persistent_decode = persistent_decode;
  if (device == "cuda")
    return tensor_parallel > 1 ? make_cuda_tensor_parallel_backend(file, options, cuda, tensor_parallel)
                               : make_cuda_backend(file, options, cuda);
#else
  (void)kv_dtype, (void)persistent_decode;
#endif
  KILN_CHECK(device == "cpu", "--device '{}' is not available in this kiln", device);
  return make_cpu_tensor_parallel_backend(file, options, tensor_parallel);
}

LoadedModel load_model(const cxxopts::ParseResult& args) {
  KILN_CHECK(args.count("model"), "give the model: -m MODEL.kiln (convert one with `kiln convert`)");
  const std::string device = choose_device(args["device"].as<std::string>());
  const int64_t n_ctx = args["ctx-size"].as<int64_t>();
  KILN_CHECK(n_ctx >= 0, "-c {} must be 0 (the model's) or a positive token count", n_ctx);
  const int threads = args["threads"].as<int>();
  KILN_CHECK(threads >= 0 && threads <= 1024, "-t {} must be 0 (all cores) or a thread count", threads);

  LoadedModel model{KilnFile::open(args["model"].as<std::string>()), nullptr, nullptr, ""};
  const TokenizerData tokenizer = model.file.tokenizer_data();
  model.tokenizer = make_tokenizer(tokenizer);
  model.chat_template = tokenizer.chat_template;
  BackendOptions options;
  options.n_ctx = n_ctx;
  options.n_threads = threads;
  model.backend = make_backend_on(device, model.file, options, kv_dtype_from(args, device),
                                  tensor_parallel_from(args), args.count("no-persistent") == 0);
  return model;
}

ChatTemplate chat_template_from(const cxxopts::ParseResult& args, const LoadedModel& model) {
  ChatTemplate t = args.count("chat-template") ? chat_template_by_name(args["chat-template"].as<std::string>())
                                               : detect_chat_template(model.chat_template);
  const Tokenizer& tok = *model.tokenizer;
  if (tok.bos_id() >= 0) t.bos_token = tok.token_to_piece(tok.bos_id());
  if (tok.eos_id() >= 0) t.eos_token = tok.token_to_piece(tok.eos_id());
  return t;
}

}  // namespace kiln
