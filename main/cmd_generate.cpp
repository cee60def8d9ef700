// kiln generate -m MODEL -p TEXT: one prompt, the continuation streamed to stdout, stats to stderr.
#include <fmt/format.h>

#include <fstream>
#include <iterator>

#include "engine/error.h"
#include "engine/generator.h"
#include "engine/nonfinite_check.h"
#include "main/cli.h"
#include "main/commands.h"
#include "main/model_options.h"
#include "main/sigint_scope.h"

namespace kiln {
namespace {

std::atomic<bool>* g_interrupt = nullptr;
void on_generate_sigint(int) {
  if (g_interrupt) g_interrupt->store(true);
}

std::string read_prompt(const cxxopts::ParseResult& args) {
  KILN_CHECK(args.count("prompt") + args.count("file") == 1, "give the prompt with -p TEXT or -f FILE (one of them)");
  if (args.count("prompt")) return args["prompt"].as<std::string>();
  const std::string path = args["file"].as<std::string>();
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in.good(), "cannot read the prompt file '{}'", path);
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  cxxopts::Options options(argv[0], "Continue one prompt and stream the text to stdout; stats go to stderr.");
  add_model_options(options);
  add_sampling_options(options);
  add_chat_options(options);
  options.add_options()("p,prompt", "the prompt text", cxxopts::value<std::string>())(
      "f,file", "read the prompt from a file", cxxopts::value<std::string>())(
      "n,n-predict", "tokens to generate (-1: until the end of turn or a full context)",
      cxxopts::value<int64_t>()->default_value("-1"))(
      "stop", "stop before this text (repeatable)", cxxopts::value<std::vector<std::string>>())(
      "chat", "wrap the prompt in the model's chat template as a user turn")(
      "no-bos", "do not prepend BOS even where the model adds one")(
      "no-stats", "print no stats line on stderr");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;

  std::string prompt = read_prompt(args);
  KILN_CHECK(!prompt.empty(), "the prompt is empty: give some text");
  const SamplerParams sampling = sampling_from(args);
  const int64_t max_tokens = args["n-predict"].as<int64_t>();
  KILN_CHECK(max_tokens >= -1, "-n {} must be -1 or a token count", max_tokens);
  LoadedModel model = load_model(args);

  bool add_bos = !args.count("no-bos");
  if (args.count("chat")) {
    std::vector<ChatMessage> messages;
    if (args.count("system")) messages.push_back({"system", args["system"].as<std::string>()});
    messages.push_back({"user", prompt});
    prompt = render_chat(chat_template_from(args, model), messages, true);
    add_bos = false;  // the templates write BOS themselves where the model wants one
  }
  GenerationRequest request;
  request.prompt = model.tokenizer->encode(prompt, add_bos, args.count("chat") > 0);
  request.max_tokens = max_tokens;
  if (args.count("stop")) request.stops = args["stop"].as<std::vector<std::string>>();

  Generator generator(*model.backend, *model.tokenizer, sampling);
  g_interrupt = &generator.interrupt();
  GenerationStats stats;
  FinishReason reason;
  try {
    // Ctrl-C stops after the token in flight (a long prompt is evaluated first); a second one ends at once.
    const SigintScope sigint(on_generate_sigint, SA_RESETHAND | SA_RESTART);
    reason = generator.generate(request, [](std::string_view text) {
      fmt::print("{}", text);
      std::fflush(stdout);
    }, &stats);
  } catch (const NonFiniteLogits& e) {
    fmt::print("\n");
    std::fflush(stdout);
    fail_nonfinite(model.file, e, args["threads"].as<int>());
  }
  g_interrupt = nullptr;
  fmt::print("\n");
  std::fflush(stdout);
  if (!args.count("no-stats"))
    fmt::print(stderr, "[prompt {} tokens, {:.1f} t/s | generated {} tokens, {:.1f} t/s | first token {:.0f} ms | {}]\n",
               stats.n_prompt, stats.prompt_tokens_per_s(), stats.n_generated, stats.generate_tokens_per_s(),
               stats.first_token_ms, to_string(reason));
  return reason == FinishReason::Interrupted ? 130 : 0;
}

}  // namespace kiln
