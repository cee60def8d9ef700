// Hugging Face folder -> .kiln -> CPU forward, end to end, against the transformers reference logits of
// the tiny models (tests/engine/make_tiny_models.py): the converter's tensor mapping (Q/K/V and gate/up
// fusion, biases, rope settings of both config.json dialects) must reproduce the reference exactly in f32.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "convert/from_hf.h"
#include "engine/backend.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "tests/convert/converted_mapping.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/convert/tiny_hf_folder.h"
#include "tests/engine/tiny_model.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

class ConvertHf : public ::testing::TestWithParam<const char*> {};

TEST_P(ConvertHf, ConvertedModelMatchesTransformers) {
  testing::TempDir dir;
  const fs::path source = fs::path(KILN_SOURCE_DIR) / "tests/data" / (std::string("tiny_") + GetParam());
  const fs::path folder = dir.path() / "model";
  fs::create_directories(folder);
  for (const char* name : {"config.json", "model.safetensors"}) fs::copy_file(source / name, folder / name);
  testing::write_byte_tokenizer(folder);

  const HfFolder hf = HfFolder::open(folder.string());
  const Conversion conversion = conversion_from_hf(hf);
  for (const SourceTensor& t : conversion.tensors)  // make_tiny_models.py saves every tensor in f32
    EXPECT_EQ(t.source_type, "F32") << t.name;
  ConvertOptions options;
  options.weight_dtype = DType::F32;
  write_conversion(conversion, dir.file("tiny.kiln"), options);
  const KilnFile file = KilnFile::open(dir.file("tiny.kiln"));

  test::expect_same_mapping(file, GetParam());

  BackendOptions backend_options;
  auto backend = make_cpu_backend(file, backend_options);
  for (const auto& ref : test::load_reference(GetParam())) {
    backend->reset();
    const std::vector<float> logits = test::forward_all(*backend, ref.tokens);
    EXPECT_LE(test::kept_logit_error(ref, logits, file.config().n_vocab), 1e-4f)  // f32 rounding only
        << ref.tokens.size() << " tokens";
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, ConvertHf,
                         ::testing::Values("llama_gqa_tied", "llama_mha", "llama_rope_linear", "mistral_swa", "qwen2"));

// A fused tensor's log names each of its parts' types once (BF16 is not mistaken for F16).
TEST(ConvertLog, JoinedTypesKeepEachTypeOnceInOrder) {
  EXPECT_EQ(joined_types({"BF16", "F16", "BF16", "Q8_0", "F16"}), "BF16+F16+Q8_0");
  EXPECT_EQ(joined_types({"Q4_1", "Q4_1", "Q4_1"}), "Q4_1");
  EXPECT_EQ(joined_types({}), "");
}

TEST(ConvertHfErrors, NamesWhatIsMissing) {
  testing::TempDir dir;
  const fs::path source = fs::path(KILN_SOURCE_DIR) / "tests/data/tiny_llama_mha";
  const fs::path folder = dir.path() / "model";
  fs::create_directories(folder);
  for (const char* name : {"config.json", "model.safetensors"}) fs::copy_file(source / name, folder / name);
  try {
    (void)conversion_from_hf(HfFolder::open(folder.string()));
    ADD_FAILURE() << "a folder without tokenizer files converted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("neither tokenizer.json nor tokenizer.model"), std::string::npos) << e.what();
  }
  nlohmann::json config = nlohmann::json::parse(std::ifstream(folder / "config.json"));
  config["model_type"] = "mamba";
  std::ofstream(folder / "config.json") << config.dump();
  testing::write_byte_tokenizer(folder);
  EXPECT_THROW((void)conversion_from_hf(HfFolder::open(folder.string())), Error);
}

}  // namespace
}  // namespace kiln
