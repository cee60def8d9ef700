// kiln convert SOURCE -o OUT.kiln: a GGUF file or Hugging Face folder to a .kiln file; or, with
// --synthetic SHAPE, random weights at a real model's shape (for speed measurements).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include "convert/conversion.h"
#include "convert/from_gguf.h"
#include "convert/from_hf.h"
#include "convert/gguf_reader.h"
#include "convert/hf_folder.h"
#include "convert/quant_blocks.h"
#include "convert/synthetic.h"
#include "engine/error.h"
#include "main/cli.h"
#include "main/commands.h"

namespace kiln {

int cmd_convert(int argc, char** argv) {
  std::vector<std::string_view> shapes;
  for (const SyntheticShape& shape : synthetic_shapes()) shapes.push_back(shape.name);
  cxxopts::Options options(argv[0], "Convert a GGUF file or a Hugging Face model folder to a .kiln file.");
  options.add_options()("source", "GGUF file or Hugging Face folder", cxxopts::value<std::string>())(
      "synthetic", fmt::format("instead of a source: random weights at this shape ({}), for kiln bench only",
                               fmt::join(shapes, ", ")),
      cxxopts::value<std::string>())(
      "o,output", "the .kiln file to write", cxxopts::value<std::string>())(
      "type", "weight type: f16, bf16, f32 or int8", cxxopts::value<std::string>()->default_value("f16"))(
      "group-size", "int8: values per scale along a row", cxxopts::value<uint32_t>()->default_value("64"))(
      "f,force", "overwrite the output if it exists")("q,quiet", "no progress bar")(
      "v,verbose", "a line per tensor (name, source type -> stored type, shape) instead of the progress bar")(
      "list-archs", "list the model families and weight types kiln converts");
  options.parse_positional({"source"});
  options.positional_help("SOURCE -o OUT.kiln");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  if (args.count("list-archs")) {
    fmt::print("Hugging Face folders (config.json model_type): {}\n", supported_hf_model_types());
    fmt::print("  weights in safetensors as F32, F16 or BF16; quantized checkpoints (GPTQ, AWQ, FP8, ...) are refused\n");
    fmt::print("GGUF files (general.architecture): {}\n", kGgufArchitecture);
    fmt::print("  tensors of {}, dequantized exactly\n", readable_ggml_types());
    return 0;
  }
  const bool synthetic = args.count("synthetic") > 0;
  KILN_CHECK(args.count("source") || synthetic, "give the model to convert: kiln convert SOURCE -o OUT.kiln");
  KILN_CHECK(!(args.count("source") && synthetic), "give a SOURCE or --synthetic SHAPE, not both");
  KILN_CHECK(args.count("output"), "give the output file: kiln convert SOURCE -o OUT.kiln");

  const std::string source = synthetic ? "" : args["source"].as<std::string>();
  const std::string output = args["output"].as<std::string>();
  ConvertOptions convert;
  const std::string type = args["type"].as<std::string>();
  const auto dtype = dtype_from_name(type == "i8" ? "int8" : type);
  KILN_CHECK(dtype && *dtype != DType::U8, "--type '{}' is not one of f16, bf16, f32, int8", type);
  convert.weight_dtype = *dtype;
  convert.group_size = args["group-size"].as<uint32_t>();
  convert.overwrite = args.count("force") > 0;
  convert.progress = !args.count("quiet") && ::isatty(STDERR_FILENO);
  convert.log_tensors = args.count("verbose") > 0;
  KILN_CHECK(synthetic || std::filesystem::absolute(source) != std::filesystem::absolute(output),
             "the output '{}' is the source: choose another output name", output);
  // Fail before the (long) conversion on what the writer would refuse at its end.
  KILN_CHECK(!std::filesystem::is_directory(output), "'{}' is a folder: give a file name for the .kiln output",
             output);
  KILN_CHECK(convert.overwrite || !std::filesystem::exists(output), "'{}' exists: use --force to overwrite it",
             output);

  if (synthetic) {
    const auto start = std::chrono::steady_clock::now();
    write_synthetic(args["synthetic"].as<std::string>(), output, convert);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "wrote {} (synthetic weights, {} in {:.1f} s)\n", output,
               format_bytes(std::filesystem::file_size(output)), seconds);
    return 0;
  }
  if (std::filesystem::is_directory(source)) {
    const HfFolder folder = HfFolder::open(source);
    write_conversion(conversion_from_hf(folder), output, convert);
  } else {
    const GgufFile gguf = GgufFile::open(source);
    write_conversion(conversion_from_gguf(gguf), output, convert);
  }
  fmt::print(stderr, "wrote {}\n", output);
  return 0;
}

}  // namespace kiln
