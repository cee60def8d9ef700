// Every family the converter imports, end to end: a tiny Hugging Face folder (tests/engine/make_tiny_models.py)
// -> .kiln -> CPU forward against the transformers reference (logits, or hidden states for BERT), the
// converter's tensors equal to the test's own mapping (tests/engine/tiny_model.cpp); `kiln generate` for
// every decoder and `kiln embed` for BERT through the binary; and the refusals that name what is wrong.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "convert/from_hf.h"
#include "engine/backend.h"
#include "engine/error.h"
#include "engine/kiln_file.h"
#include "tests/convert/converted_mapping.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/convert/tiny_hf_folder.h"
#include "tests/engine/tiny_model.h"
#include "tests/run_process.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

// Converts tiny_<name> (with a byte tokenizer, or a WordPiece vocab.txt for BERT) to an f32 .kiln file.
std::string convert_tiny(const testing::TempDir& dir, const std::string& name) {
  const fs::path folder = testing::copy_tiny_model(dir.path(), name);
  if (name == "bert") {
    testing::write_vocab_txt(folder, 256);
  } else {
    testing::write_byte_tokenizer(folder);
  }
  const HfFolder hf = HfFolder::open(folder.string());
  ConvertOptions options;
  options.weight_dtype = DType::F32;
  write_conversion(conversion_from_hf(hf), dir.file(name + ".kiln"), options);
  return dir.file(name + ".kiln");
}

class DecoderFamily : public ::testing::TestWithParam<const char*> {};

TEST_P(DecoderFamily, ConvertedModelMatchesTransformers) {
  testing::TempDir dir;
  const KilnFile file = KilnFile::open(convert_tiny(dir, GetParam()));
  test::expect_same_mapping(file, GetParam());

  BackendOptions options;
  options.n_ctx = 512;
  auto backend = make_cpu_backend(file, options);
  for (const auto& ref : test::load_reference(GetParam())) {
    backend->reset();
    const std::vector<float> logits = test::forward_all(*backend, ref.tokens);
    EXPECT_LE(test::kept_logit_error(ref, logits, file.config().n_vocab), 1e-4f)  // f32 rounding only
        << ref.tokens.size() << " tokens";
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, DecoderFamily,
                         ::testing::Values("gpt2", "gptj", "gptneox", "bloom", "opt", "opt_post_ln"));

TEST(EncoderFamily, ConvertedBertMatchesTransformers) {
  testing::TempDir dir;
  const KilnFile file = KilnFile::open(convert_tiny(dir, "bert"));
  test::expect_same_mapping(file, "bert");
  EXPECT_EQ(file.tokenizer_data().kind, TokenizerKind::WordPiece);

  BackendOptions options;
  auto backend = make_cpu_backend(file, options);
  const int64_t dim = file.config().dim;
  for (const auto& ref : test::load_hidden_reference("bert")) {
    std::vector<float> hidden(ref.tokens.size() * size_t(dim));
    backend->reset();
    backend->forward(ref.tokens.data(), int64_t(ref.tokens.size()), 0, hidden.data(), true);
    float max_error = 0;
    for (size_t i = 0; i < hidden.size(); ++i) max_error = std::max(max_error, std::fabs(hidden[i] - ref.hidden[i]));
    EXPECT_LE(max_error, 2e-5f) << ref.tokens.size() << " tokens";
  }
}

struct PoolingCase {
  const char* name;
  nlohmann::json modules;        // modules.json, or null for none
  nlohmann::json pooling;        // 1_Pooling/config.json
  int64_t max_seq_length = 0;    // sentence_bert_config.json when > 0
  Pooling mode;
  bool normalize;
};

class EmbedPooling : public ::testing::TestWithParam<PoolingCase> {};

// `kiln embed` prints, per input line, the pooled hidden states of [CLS] text [SEP] (cut to the
// sentence-transformers length), normalized when the model says so, computed here from the backend.
TEST_P(EmbedPooling, PrintsPooledRows) {
  const PoolingCase& pc = GetParam();
  testing::TempDir dir;
  const fs::path folder = testing::copy_tiny_model(dir.path(), "bert");
  testing::write_vocab_txt(folder, 256);
  if (!pc.modules.is_null()) {
    std::ofstream(folder / "modules.json") << pc.modules.dump();
    fs::create_directories(folder / "1_Pooling");
    std::ofstream(folder / "1_Pooling/config.json") << pc.pooling.dump();
  }
  if (pc.max_seq_length > 0)
    std::ofstream(folder / "sentence_bert_config.json") << nlohmann::json{{"max_seq_length", pc.max_seq_length}}.dump();
  const std::string model = dir.file("bert.kiln");
  auto r = testing::run_kiln({"convert", folder.string(), "-o", model, "--type", "f32", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> texts = {"hello world", "the quick brown fox", "", "kiln, kiln!"};
  {
    std::ofstream out(dir.file("texts.txt"));
    for (const auto& t : texts) out << t << "\n";
  }
  // The CPU backend is the reference below, so the command runs there too (a GPU would default to CUDA).
  r = testing::run_kiln({"embed", "-m", model, "-f", dir.file("texts.txt"), "--device", "cpu"});
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const KilnFile file = KilnFile::open(model);
  EXPECT_EQ(file.config().pooling, pc.mode);
  EXPECT_EQ(file.config().pooling_normalize, pc.normalize);
  const auto tokenizer = make_tokenizer(file.tokenizer_data());
  BackendOptions options;
  auto backend = make_cpu_backend(file, options);
  const auto dim = size_t(file.config().dim);
  std::istringstream lines(r.out);
  size_t i = 0;
  for (std::string line; std::getline(lines, line); ++i) {
    ASSERT_LT(i, texts.size());
    const nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_EQ(j.at("index").get<size_t>(), i);
    const auto got = j.at("embedding").get<std::vector<double>>();
    ASSERT_EQ(got.size(), dim);

    std::vector<int32_t> ids = tokenizer->encode(texts[i], true);
    EXPECT_EQ(ids.front(), 2) << "[CLS]";
    if (pc.max_seq_length > 0 && int64_t(ids.size()) >= pc.max_seq_length) ids.resize(size_t(pc.max_seq_length - 1));
    ids.push_back(tokenizer->eos_id());
    std::vector<float> hidden(ids.size() * dim);
    backend->reset();
    backend->forward(ids.data(), int64_t(ids.size()), 0, hidden.data(), true);
    std::vector<double> want(dim, pc.mode == Pooling::Max ? -1e30 : 0.0);
    const size_t rows = pc.mode == Pooling::Cls ? 1 : ids.size();
    for (size_t t = 0; t < rows; ++t)
      for (size_t d = 0; d < dim; ++d) {
        const double v = hidden[t * dim + d];
        want[d] = pc.mode == Pooling::Max ? std::max(want[d], v) : want[d] + v;
      }
    double norm = 0;
    for (size_t d = 0; d < dim; ++d) {
      if (pc.mode == Pooling::Mean) want[d] /= double(rows);
      norm += want[d] * want[d];
    }
    for (size_t d = 0; d < dim; ++d)
      EXPECT_NEAR(got[d], pc.normalize ? want[d] / std::sqrt(norm) : want[d], 1e-6) << d;
  }
  EXPECT_EQ(i, texts.size());
}

const nlohmann::json kTransformer = {{"idx", 0}, {"name", "0"}, {"path", ""},
                                     {"type", "sentence_transformers.models.Transformer"}};
const nlohmann::json kPooling = {{"idx", 1}, {"name", "1"}, {"path", "1_Pooling"},
                                 {"type", "sentence_transformers.models.Pooling"}};
const nlohmann::json kNormalize = {{"idx", 2}, {"name", "2"}, {"path", "2_Normalize"},
                                   {"type", "sentence_transformers.models.Normalize"}};

INSTANTIATE_TEST_SUITE_P(
    TinyBert, EmbedPooling,
    ::testing::Values(PoolingCase{"default_mean_normalized", nullptr, nullptr, 0, Pooling::Mean, true},
                      PoolingCase{"cls_normalized", {kTransformer, kPooling, kNormalize},
                                  {{"pooling_mode_cls_token", true}, {"pooling_mode_mean_tokens", false}}, 0,
                                  Pooling::Cls, true},
                      PoolingCase{"max_cut_to_5", {kTransformer, kPooling}, {{"pooling_mode_max_tokens", true}}, 5,
                                  Pooling::Max, false}),
    [](const auto& info) { return std::string(info.param.name); });

// A decoder refuses `kiln embed`, naming what it is.
TEST(EncoderFamily, EmbedRefusesALanguageModel) {
  testing::TempDir dir;
  const std::string model = convert_tiny(dir, "gpt2");
  std::ofstream(dir.file("texts.txt")) << "hello\n";
  const auto r = testing::run_kiln({"embed", "-m", model, "-f", dir.file("texts.txt")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("not an embedding model"), std::string::npos) << r.err;
}

// `kiln convert`, `kiln generate` and `kiln chat` for every decoder family, through the binary: greedy
// decoding prints the tokens the backend's argmax picks, computed here in-process.
class GenerateFamily : public ::testing::TestWithParam<const char*> {};

TEST_P(GenerateFamily, GenerateAndChatRun) {
  testing::TempDir dir;
  const fs::path folder = testing::copy_tiny_model(dir.path(), GetParam());
  const nlohmann::json config = nlohmann::json::parse(std::ifstream(folder / "config.json"));
  testing::write_byte_tokenizer(folder, config.at("vocab_size").get<int>());  // a token for every row
  const std::string model = dir.file("model.kiln");
  auto r = testing::run_kiln({"convert", folder.string(), "-o", model, "--type", "f32", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = testing::run_kiln({"generate", "-m", model, "-p", "hi", "-n", "5", "--temp", "0", "--no-stats", "-t", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const KilnFile file = KilnFile::open(model);
  const auto tokenizer = make_tokenizer(file.tokenizer_data());
  BackendOptions options;
  options.n_threads = 2;  // as the command ran
  auto backend = make_cpu_backend(file, options);
  std::vector<int32_t> ids = tokenizer->encode("hi", true);
  ASSERT_EQ(ids, (std::vector<int32_t>{'h', 'i'}));
  std::vector<float> logits(size_t(file.config().n_vocab));
  std::vector<int32_t> generated;
  backend->forward(ids.data(), int64_t(ids.size()), 0, logits.data(), false);
  for (int k = 0; k < 5; ++k) {
    const auto best = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    generated.push_back(best);
    backend->forward(&best, 1, int64_t(ids.size() + generated.size() - 1), logits.data(), false);
  }
  EXPECT_EQ(r.out, utf8_sanitize(tokenizer->decode(generated)) + "\n");

  // Two chat turns (the second reuses the first's cache) with a named template, from standard input.
  r = testing::run_kiln({"chat", "-m", model, "--chat-template", "chatml", "-n", "4", "--temp", "0", "-t", "2"},
                        "hello\nhow are you?\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  size_t replies = 0;
  for (size_t at = r.err.find("| reply 4 tokens"); at != std::string::npos; at = r.err.find("| reply 4 tokens", at + 1))
    ++replies;
  EXPECT_EQ(replies, 2u) << r.err;
}

INSTANTIATE_TEST_SUITE_P(Tiny, GenerateFamily,
                         ::testing::Values("llama_gqa_tied", "llama_mha", "llama_rope_linear", "mistral_swa", "qwen2",
                                           "gpt2", "gptj", "gptneox", "bloom", "opt", "opt_post_ln"));

// Converting a folder whose config.json is edited: the error names the setting.
void expect_refused(const std::string& name, const nlohmann::json& patch, const std::string& message) {
  testing::TempDir dir;
  const fs::path folder = testing::copy_tiny_model(dir.path(), name);
  testing::write_byte_tokenizer(folder);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(folder / "config.json"));
  config.merge_patch(patch);
  std::ofstream(folder / "config.json") << config.dump();
  try {
    (void)conversion_from_hf(HfFolder::open(folder.string()));
    ADD_FAILURE() << name << " converted with " << patch.dump();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
}

TEST(ConvertFamilyErrors, NameWhatIsNotSupported) {
  expect_refused("gpt2", {{"scale_attn_by_inverse_layer_idx", true}}, "scale_attn_by_inverse_layer_idx");
  expect_refused("gpt2", {{"activation_function", "swish"}}, "activation 'swish'");
  expect_refused("bloom", {{"apply_residual_connection_post_layernorm", true}},
                 "apply_residual_connection_post_layernorm");
  expect_refused("bert", {{"position_embedding_type", "relative_key"}}, "relative_key");
  expect_refused("bert", {{"is_decoder", true}}, "decoder");
  expect_refused("opt", {{"word_embed_proj_dim", 32}}, "project_in.weight");  // the checkpoint has none
  expect_refused("gptneox", {{"model_type", "mamba"}}, "supported: llama, mistral, qwen2, gpt2");
}

TEST(ConvertFamilyErrors, PickleOnlyFolderAsksForSafetensors) {
  testing::TempDir dir;
  const fs::path folder = testing::copy_tiny_model(dir.path(), "gpt2");
  fs::rename(folder / "model.safetensors", folder / "pytorch_model.bin");
  try {
    (void)HfFolder::open(folder.string());
    ADD_FAILURE() << "a folder with only pytorch_model.bin opened";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("safetensors"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln
