// kiln chat -m MODEL: a conversation in the model's chat template. On a terminal: line editing, history,
// commands and Ctrl-C to stop a reply. Otherwise every line of stdin is a message (or a command), each
// reply goes to stdout and everything else to stderr.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>

#include "engine/error.h"
#include "engine/generator.h"
#include "engine/nonfinite_check.h"
#include "main/chat_input.h"
#include "main/chat_prompt.h"
#include "main/chat_session.h"
#include "main/chat_settings.h"
#include "main/cli.h"
#include "main/commands.h"
#include "main/line_reader.h"
#include "main/model_options.h"
#include "main/sigint_scope.h"

namespace kiln {
namespace {

// What the SIGINT handler can reach. Only this command's run sets them.
std::atomic<std::atomic<bool>*> g_generator_interrupt{nullptr};
std::atomic<bool> g_busy{false};          // a reply is being prepared or written
std::atomic<bool> g_stop_reply{false};    // Ctrl-C arrived while busy
std::atomic<bool> g_idle_interrupt{false};  // Ctrl-C arrived as a signal while waiting for input

void on_sigint(int) {
  if (g_busy.load()) {
    g_stop_reply.store(true);
    if (std::atomic<bool>* interrupt = g_generator_interrupt.load()) interrupt->store(true);
  } else {
    g_idle_interrupt.store(true);
  }
}

// Marks a reply in progress for the signal handler, until the scope ends (also by an exception).
class BusyScope {
 public:
  explicit BusyScope(Generator& generator) {
    g_generator_interrupt.store(&generator.interrupt());
    g_stop_reply.store(false);
    g_busy.store(true);
  }
  ~BusyScope() {
    g_busy.store(false);
    g_generator_interrupt.store(nullptr);
  }
  BusyScope(const BusyScope&) = delete;
  BusyScope& operator=(const BusyScope&) = delete;
};

constexpr std::string_view kHelp = R"(Type a message and press Enter. A line ending in \ continues on the next line;
a line starting with """ opens a block of lines that the next line ending in """ closes.
  /help            this help
  /exit, Ctrl-D    leave
  /reset, /clear   forget the conversation (the system prompt stays)
  /save FILE       write the conversation as JSON
  /load FILE       replace the conversation with one saved by /save
  /regen           write the last reply again
  /system [TEXT]   show, or set, the system prompt
  /set [NAME VAL]  show the reply settings, or set one: temp, top-k, top-p, min-p, repeat-penalty, seed, n
  /read FILE       send a text file as a message
  /stats           token counts and speeds
Ctrl-C stops a reply; pressed twice at the prompt it leaves. Begin a message with // to send one that
starts with /.
)";

std::string expand_home(const std::string& path) {
  const char* home = std::getenv("HOME");
  if (path.starts_with("~/") && home && *home) return home + path.substr(1);
  return path;
}

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t");
  return begin == std::string::npos ? "" : s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

struct ChatSettings {
  SamplerParams sampling;
  int64_t max_tokens = -1;
  bool interactive = false;
  int n_threads = 0;
};

struct SessionTotals {
  int64_t n_replies = 0;
  int64_t n_generated = 0;
  double generate_ms = 0;
  GenerationStats last;
  FinishReason last_reason = FinishReason::EndOfTurn;
};

class ChatLoop {
 public:
  ChatLoop(LoadedModel& model, ChatTemplate tmpl, ChatSettings settings, std::string system, LineReader& reader)
      : model_(model), tmpl_(std::move(tmpl)), settings_(settings), reader_(reader) {
    session_.system = std::move(system);
    generator_ = std::make_unique<Generator>(*model_.backend, *model_.tokenizer, settings_.sampling);
  }

  // Returns the exit code.
  int run() {
    using Clock = std::chrono::steady_clock;
    std::optional<Clock::time_point> last_ctrl_c;
    const std::string prompt = settings_.interactive ? "> " : "", more = settings_.interactive ? "... " : "";
    for (;;) {
      const ChatInput input = read_chat_input(reader_, prompt, more);
      if (input.status == ReadStatus::End) {
        if (settings_.interactive) fmt::print("\n");
        return 0;
      }
      if (input.status == ReadStatus::Interrupted) {
        if (!settings_.interactive) return 130;  // nothing to go back to: the input is not a person
        const auto now = Clock::now();
        if (last_ctrl_c && now - *last_ctrl_c < std::chrono::seconds(1)) return 130;
        last_ctrl_c = now;
        fmt::print(stderr, "(Ctrl-C again to leave, or /exit)\n");
        continue;
      }
      if (input.unterminated) fmt::print(stderr, "note: the input ended inside a message; sending what there is\n");
      if (input.text.empty()) continue;
      try {
        if (!input.block && input.text.starts_with('/') && !input.text.starts_with("//")) {
          if (!run_command(input.text)) return 0;
        } else {
          answer(input.text.starts_with("//") ? input.text.substr(1) : input.text);
        }
      } catch (const NonFiniteLogits& e) {
        fail_nonfinite(model_.file, e, settings_.n_threads);  // every later reply would fail the same way
      } catch (const Error& e) {
        fmt::print(stderr, "error: {}\n", e.what());
      }
      std::fflush(stdout);
    }
  }

 private:
  // Returns false for /exit.
  bool run_command(const std::string& line) {
    const size_t space = line.find_first_of(" \t\n");
    const std::string name = line.substr(0, space);
    const std::string arg = space == std::string::npos ? "" : trim(line.substr(space));
    if (name == "/exit" || name == "/quit") return false;
    if (name == "/help") {
      fmt::print("{}", kHelp);
    } else if (name == "/reset" || name == "/clear") {
      session_.reset();
      fmt::print(stderr, "[conversation cleared{}]\n", session_.system.empty() ? "" : "; the system prompt stays");
    } else if (name == "/save") {
      KILN_CHECK(!arg.empty(), "give the file: /save FILE");
      save_session(session_, expand_home(arg));
      fmt::print(stderr, "[saved {} messages to {}]\n", session_.messages.size(), arg);
    } else if (name == "/load") {
      KILN_CHECK(!arg.empty(), "give the file: /load FILE");
      ChatSession loaded = load_session(expand_home(arg));
      if (!loaded.system.empty()) check_system_prompt(tmpl_, loaded.system);
      session_ = std::move(loaded);
      fmt::print(stderr, "[loaded {} messages from {}{}]\n", session_.messages.size(), arg,
                 session_.system.empty() ? "" : ", with a system prompt");
    } else if (name == "/regen") {
      regenerate();
    } else if (name == "/system") {
      if (arg.empty()) {
        fmt::print("{}\n", session_.system.empty() ? "(no system prompt: the template's default applies)"
                                                   : session_.system);
      } else {
        check_system_prompt(tmpl_, arg);
        session_.system = arg;
        fmt::print(stderr, "[system prompt set]\n");
      }
    } else if (name == "/set") {
      change_setting(arg);
    } else if (name == "/read") {
      KILN_CHECK(!arg.empty(), "give the file: /read FILE");
      const std::string text = read_message_file(expand_home(arg));
      fmt::print(stderr, "[read {} bytes from {}]\n", text.size(), arg);
      answer(text);
    } else if (name == "/stats") {
      print_totals();
    } else {
      fail("unknown command '{}': /help lists them (begin a message with // to send one starting with /)", name);
    }
    return true;
  }

  // /set: the next replies sample with the changed settings (a fresh generator, as on start-up).
  void change_setting(const std::string& arg) {
    const ReplySettings current{settings_.sampling, settings_.max_tokens};
    if (arg.empty()) {
      fmt::print("{}\n", describe(current));
      return;
    }
    const size_t space = arg.find_first_of(" \t");
    KILN_CHECK(space != std::string::npos, "give a setting and its value: /set temp 0.7 (/set alone lists them)");
    const ReplySettings changed = with_setting(current, arg.substr(0, space), trim(arg.substr(space)));
    settings_.sampling = changed.sampling;
    settings_.max_tokens = changed.max_tokens;
    generator_ = std::make_unique<Generator>(*model_.backend, *model_.tokenizer, settings_.sampling);
    fmt::print(stderr, "[{}]\n", describe(changed));
  }

  void answer(const std::string& text) {
    session_.messages.push_back({"user", text});
    try {
      reply();
    } catch (...) {
      session_.messages.pop_back();  // the message was not answered: it is not part of the conversation
      throw;
    }
  }

  void regenerate() {
    KILN_CHECK(!session_.messages.empty(), "there is no reply to write again yet");
    const ChatMessage previous = session_.messages.back();
    session_.messages.pop_back();
    if (settings_.sampling.temperature > 0) {
      // The generator re-seeds its sampler for every reply: a new seed gives a new reply.
      SamplerParams sampling = settings_.sampling;
      sampling.seed += uint64_t(++n_regenerated_) * 0x9E3779B97F4A7C15ull;
      generator_ = std::make_unique<Generator>(*model_.backend, *model_.tokenizer, sampling);
    }
    try {
      reply();
    } catch (...) {
      session_.messages.push_back(previous);
      throw;
    }
  }

  // Writes the assistant's turn for the last user message and adds it to the conversation.
  void reply() {
    std::optional<BusyScope> busy(std::in_place, *generator_);
    const int64_t n_ctx = generator_->n_ctx();
    const int64_t room = reply_room(settings_.max_tokens, n_ctx);
    ChatPrompt prompt = build_chat_prompt(session_, tmpl_, *model_.tokenizer, n_ctx, room);
    if (prompt.n_dropped_turns > 0) {
      fmt::print(stderr, "[dropped the {} oldest turn{} to fit the context: {} -> {} tokens, {} kept for the reply, "
                 "context {}]\n", prompt.n_dropped_turns, prompt.n_dropped_turns == 1 ? "" : "s",
                 prompt.n_tokens_before, prompt.tokens.size(), room, n_ctx);
    }
    session_.first_in_context = prompt.first_in_context;

    GenerationRequest request;
    request.prompt = std::move(prompt.tokens);
    request.max_tokens = settings_.max_tokens;
    std::string text;
    GenerationStats stats;
    FinishReason reason = FinishReason::Interrupted;
    if (!g_stop_reply.load()) {
      reason = generator_->generate(request, [&text](std::string_view piece) {
        text += piece;
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      }, &stats);
    }
    fmt::print("\n");
    std::fflush(stdout);
    busy.reset();
    // A Ctrl-C that came after the reply had ended stopped nothing: it counts as one at the prompt.
    if (g_stop_reply.load() && reason != FinishReason::Interrupted) g_idle_interrupt.store(true);
    session_.messages.push_back({"assistant", std::move(text)});
    if (reason == FinishReason::Interrupted) fmt::print(stderr, "[interrupted]\n");
    if (reason == FinishReason::ContextFull)
      fmt::print(stderr, "[the context is full: the reply was cut; the oldest turns will be dropped next]\n");
    totals_.n_replies += 1;
    totals_.n_generated += stats.n_generated;
    totals_.generate_ms += stats.generate_ms;
    totals_.last = stats;
    totals_.last_reason = reason;
    print_stats(stats, reason);
  }

  void print_stats(const GenerationStats& s, FinishReason reason) const {
    fmt::print(stderr,
               "[prompt {} tokens ({} cached), {:.1f} t/s | reply {} tokens, {:.1f} t/s | first token {:.0f} ms | "
               "context {}/{} | {}]\n",
               s.n_prompt, s.n_cached, s.prompt_tokens_per_s(), s.n_generated, s.generate_tokens_per_s(),
               s.first_token_ms, generator_->context().size(), generator_->n_ctx(), to_string(reason));
  }

  void print_totals() const {
    const size_t n_turns = session_.messages.size() / 2;
    const size_t n_kept = (session_.messages.size() - session_.first_in_context) / 2;
    const double rate = totals_.generate_ms > 0 ? 1000.0 * double(totals_.n_generated) / totals_.generate_ms : 0;
    fmt::print(stderr, "[turns {} ({} in the context) | system prompt: {} | {} replies, {} tokens, {:.1f} t/s]\n",
               n_turns, n_kept, session_.system.empty() ? "default" : "set", totals_.n_replies, totals_.n_generated,
               rate);
    if (totals_.n_replies > 0) print_stats(totals_.last, totals_.last_reason);
  }

  LoadedModel& model_;
  ChatTemplate tmpl_;
  ChatSettings settings_;
  LineReader& reader_;
  ChatSession session_;
  std::unique_ptr<Generator> generator_;
  SessionTotals totals_;
  int64_t n_regenerated_ = 0;
};

}  // namespace

int cmd_chat(int argc, char** argv) {
  cxxopts::Options options(argv[0],
                           "Chat with the model in its chat template. On a terminal /help lists the commands; "
                           "otherwise each line of stdin is a message (or a command) and the replies go to stdout.");
  add_model_options(options);
  add_sampling_options(options);
  add_chat_options(options);
  options.add_options()("n,n-predict", "most tokens per reply (-1: until the end of the turn)",
                        cxxopts::value<int64_t>()->default_value("-1"));
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  KILN_CHECK(args.unmatched().empty(), "unexpected argument '{}': give the model with -m FILE",
             args.unmatched().empty() ? "" : args.unmatched().front());

  ChatSettings settings;
  settings.sampling = sampling_from(args);
  settings.max_tokens = args["n-predict"].as<int64_t>();
  KILN_CHECK(settings.max_tokens >= -1, "-n {} must be -1 or a token count", settings.max_tokens);
  settings.interactive = ::isatty(STDIN_FILENO) == 1;
  settings.n_threads = args["threads"].as<int>();
  LoadedModel model = load_model(args);
  ChatTemplate tmpl = chat_template_from(args, model);
  const std::string system = args.count("system") ? args["system"].as<std::string>() : "";
  if (!system.empty()) check_system_prompt(tmpl, system);

  std::unique_ptr<LineReader> reader = settings.interactive
                                           ? make_terminal_reader(default_history_path(), &g_idle_interrupt)
                                           : make_stream_reader(STDIN_FILENO, &g_idle_interrupt);
  if (settings.interactive) {
    fmt::print(stderr, "kiln chat: {} template, context {} tokens. /help lists the commands; Ctrl-D or /exit "
               "leaves.\n", tmpl.name, model.backend->n_ctx());
  }
  // For the command's lifetime; interrupted system calls restart, so a Ctrl-C during a reply cannot cut
  // the output short (the readers poll, which returns anyway).
  SigintScope sigint(on_sigint, SA_RESTART);
  ChatLoop loop(model, std::move(tmpl), settings, system, *reader);
  return loop.run();
}

}  // namespace kiln
