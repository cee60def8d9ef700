// Encode throughput on ~1 MB of text (not a test): `bench_tokenizer` from the build folder.
#include <benchmark/benchmark.h>

#include "tests/tokenizer/tok_fixtures.h"
#include "tokenizer/tokenizer.h"

namespace {

// ~1 MB of text. Mixed: the whole corpus (prose, code, scripts, emoji, ...) repeated, then the
// 100 KB of random Unicode. Training text: the SentencePiece training text (docstrings, source code,
// other scripts) repeated: natural text with many distinct words.
std::string megabyte_text(bool mixed) {
  std::string base;
  if (mixed) {
    for (const auto& c : kiln::test::corpus()) base += c.text + "\n";
  } else {
    base = kiln::test::read_file(kiln::test::data_path("tok_spm_train.txt"));
  }
  std::string text;
  while (text.size() < (mixed ? 900'000u : 1'000'000u)) text += base;
  return mixed ? text + kiln::test::random_text() : text;
}

void encode_mb(benchmark::State& state, const kiln::TokenizerData& data) {
  const auto tok = kiln::make_tokenizer(data);
  const std::string text = megabyte_text(state.range(0) == 1);
  size_t n_ids = 0;
  for (auto _ : state) {
    const auto ids = tok->encode(text, false);
    n_ids = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["ids"] = static_cast<double>(n_ids);
}

void BM_EncodeSmolLm2(benchmark::State& state) { encode_mb(state, kiln::test::smollm2_data()); }
void BM_EncodeSentencePiece(benchmark::State& state) { encode_mb(state, kiln::test::spm_data(false)); }

// Argument: 0 = training text, 1 = mixed corpus + random Unicode.
BENCHMARK(BM_EncodeSmolLm2)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeSentencePiece)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
