// kiln batch IN -o OUT.jsonl -m MODEL: every line of IN through the model with continuous batching,
// one record per line in OUT. OUT is a journal: a rerun resumes it, and a finished run leaves it in
// input order.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <set>

#include "engine/batch_backend.h"
#include "engine/batch_scheduler.h"
#ifdef KILN_HAVE_CUDA
#include "engine/cuda_batch_backend.h"
#endif
#include "engine/error.h"
#include "engine/json_input.h"
#include "kernels/cpu/thread_pool.h"
#include "main/batch_input.h"
#include "main/batch_journal.h"
#include "main/batch_output.h"
#include "main/batch_profile.h"
#include "main/batch_progress.h"
#include "main/batch_requests.h"
#include "main/cli.h"
#include "main/commands.h"
#include "main/model_options.h"

namespace kiln {
namespace {

// "512M", "2G", "1.5G"; a bare number is MiB. "auto": 1 GiB on the CPU; on a GPU 0, which the CUDA backend
// takes as what the GPU has free (at most what the sequences can use).
uint64_t parse_memory(const std::string& text, const std::string& device) {
  if (text == "auto") return device == "cuda" ? 0 : uint64_t(1) << 30;
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    fail("--kv-memory '{}' is not a size: write it like 512M or 2G, or auto", text);
  }
  const std::string unit = text.substr(used);
  double scale = 0;
  if (unit.empty() || unit == "M" || unit == "MB" || unit == "MiB") scale = 1 << 20;
  if (unit == "G" || unit == "GB" || unit == "GiB") scale = 1 << 30;
  KILN_CHECK(scale > 0 && value > 0 && value * scale < 1e15,
             "--kv-memory '{}' is not a size: write it like 512M or 2G, or auto", text);
  return uint64_t(value * scale);
}

// The batched backend of a device (from choose_device); a new device is one line here.
std::unique_ptr<BatchBackend> make_batch_backend(const std::string& device, const KilnFile& file,
                                                 const BatchBackendOptions& options, cuda::KvDType kv_dtype,
                                                 const std::shared_ptr<StageTimer>& stage_timer) {
#ifdef KILN_HAVE_CUDA
  CudaBatchOptions cuda;
  cuda.kv_dtype = kv_dtype;
  cuda.stage_timer = stage_timer;
  cuda.matmul_rows = matmul_rows_for(options.max_sequences);
  if (device == "cuda") return make_cuda_batch_backend(file, options, cuda);
#else
  (void)kv_dtype, (void)stage_timer;
#endif
  KILN_CHECK(device == "cpu", "--device '{}' is not available in this kiln", device);
  return make_cpu_batch_backend(file, options);
}

std::string read_input(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in.good(), "cannot read the input '{}'", path);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::string random_hex() {
  std::random_device device;
  return fmt::format("{:08x}{:08x}", device(), device());
}

RequestDefaults defaults_from(const cxxopts::ParseResult& args) {
  RequestDefaults d;
  d.sampling = sampling_from(args);
  d.max_tokens = args["n-predict"].as<int64_t>();
  KILN_CHECK(d.max_tokens >= -1, "-n {} must be -1 or a token count", d.max_tokens);
  if (args.count("stop")) d.stops = args["stop"].as<std::vector<std::string>>();
  d.chat = args.count("chat") > 0;
  if (args.count("system")) d.system = args["system"].as<std::string>();
  d.add_bos = !args.count("no-bos");
  return d;
}

// n_requests: the input's lines; sequence slots beyond them would only take memory (and on a GPU widen
// every matmul call).
BatchBackendOptions backend_options(const cxxopts::ParseResult& args, const std::string& device, int64_t n_requests) {
  BatchBackendOptions o;
  o.n_ctx = args["ctx-size"].as<int64_t>();
  KILN_CHECK(o.n_ctx >= 0, "-c {} must be 0 (the model's) or a positive token count", o.n_ctx);
  o.n_threads = args["threads"].as<int>();
  KILN_CHECK(o.n_threads >= 0 && o.n_threads <= 1024, "-t {} must be 0 (all cores) or a thread count", o.n_threads);
  const int64_t parallel = args["parallel"].as<int64_t>();
  KILN_CHECK(parallel >= 0 && parallel <= 4096, "--parallel {} must be 0 (as many as fit) or a count up to 4096",
             parallel);
  o.max_step_tokens = args["batch-size"].as<int64_t>();
  KILN_CHECK(o.max_step_tokens >= 1 && o.max_step_tokens <= 65536, "-b {} must be a token count from 1 to 65536",
             o.max_step_tokens);
  o.max_sequences = parallel > 0 ? parallel : std::clamp<int64_t>(std::min<int64_t>(256, n_requests), 1, o.max_step_tokens);
  o.kv_bytes = parse_memory(args["kv-memory"].as<std::string>(), device);
  return o;
}

// One run over the input: resumes OUT, writes the records of what is left, sorts OUT at the end.
class BatchRun {
 public:
  BatchRun(const cxxopts::ParseResult& args, const BatchInput& input, const std::string& out_path)
      : args_(args), input_(input), out_path_(out_path), records_(input.items.size()) {}

  int run() {
    const RequestDefaults defaults = defaults_from(args_);
    const std::string model_path = args_.count("model") ? args_["model"].as<std::string>() : "";
    KILN_CHECK(!model_path.empty(), "give the model: -m MODEL.kiln (convert one with `kiln convert`)");
    LoadedModel model{KilnFile::open(model_path), nullptr, nullptr, ""};
    const TokenizerData tokenizer_data = model.file.tokenizer_data();
    model.tokenizer = make_tokenizer(tokenizer_data);
    model.chat_template = tokenizer_data.chat_template;
    std::optional<ChatTemplate> tmpl;
    for (const BatchItem& item : input_.items)
      if (item.runnable() && uses_chat_template(item, defaults)) {
        tmpl = chat_template_from(args_, model);
        break;
      }
    context_ = {std::filesystem::path(model_path).stem().string(), int64_t(std::time(nullptr)), random_hex()};
    const std::string device = choose_device(args_["device"].as<std::string>());
    KILN_CHECK(tensor_parallel_from(args_) == 1, "kiln batch runs a model on one rank: leave out -tp");
    if (args_.count("profile")) profile_.emplace();
    auto backend = make_batch_backend(device, model.file, backend_options(args_, device, int64_t(input_.items.size())),
                                      kv_dtype_from(args_, device), profile_ ? profile_->timer() : nullptr);
    BatchOptions options;
    options.max_parallel = args_["parallel"].as<int64_t>();
    options.max_step_tokens = backend->max_step_tokens();
    BatchScheduler scheduler(*backend, *model.tokenizer, options);

    resume();
    fmt::print(stderr, "kiln batch: {} lines of {}, {} done before; {} backend, up to {} sequences at once, {} KV "
               "positions in all\n", input_.items.size(), to_string(input_.kind), tally_.resumed, backend->name(),
               scheduler.max_parallel(), backend->free_blocks() * backend->block_positions());
    BatchJournal journal(out_path_);
    meter_.emplace(::isatty(2) == 1);
    // The requests are tokenized on every core, then submitted in input order: the same run either way.
    const size_t n_items = input_.items.size();
    std::vector<std::optional<BatchRequest>> requests(n_items);
    std::vector<std::string> refused(n_items);
    ThreadPool(0).parallel_for(int64_t(n_items), [&](int64_t begin, int64_t end) {
      for (auto i = size_t(begin); i < size_t(end); ++i) {
        const BatchItem& item = input_.items[i];
        if (!records_[i].empty() || !item.runnable()) continue;
        try {
          requests[i] = make_request(item, int64_t(i), defaults, *model.tokenizer, tmpl ? &*tmpl : nullptr);
        } catch (const Error& e) {
          refused[i] = e.what();
        }
      }
    });
    for (size_t i = 0; i < n_items; ++i) {
      if (!records_[i].empty()) continue;
      if (requests[i]) {
        scheduler.submit(std::move(*requests[i]));
        continue;
      }
      BatchOutcome failed;  // not runnable (the record says why), or refused
      failed.error = std::move(refused[i]);
      write(journal, i, failed);
    }
    while (!scheduler.idle()) {
      std::vector<BatchResult> finished = scheduler.step();
      const BatchProgress progress = scheduler.progress();
      tally_.prompt_tokens = progress.n_prompt_tokens;
      tally_.generated_tokens = progress.n_generated_tokens;
      tally_.steps = progress.n_steps;
      tally_.forward_seconds = progress.forward_seconds;
      tally_.sampling_seconds = progress.sampling_seconds;
      for (BatchResult& r : finished)
        write(journal, size_t(r.index), {std::move(r.text), r.n_prompt, r.n_generated, r.finish, std::move(r.error), ""});
      meter_->update(tally_);
    }
    if (args_.count("no-sort")) {
      journal.sync();
    } else {
      replace_with_lines(out_path_, records_);
    }
    meter_->finish(tally_);
    if (profile_) fmt::print(stderr, "{}", profile_->table(tally_, meter_->seconds()));
    return 0;
  }

 private:
  // Keeps the records an earlier run finished for lines that can run; the others are written again.
  // Refuses an OUT with ids that IN does not have: it holds another batch's results.
  void resume() {
    std::map<std::string, size_t> line_of_id;  // runnable lines only: their ids are unique
    std::set<std::string> all_ids;
    for (size_t i = 0; i < input_.items.size(); ++i) {
      const BatchItem& item = input_.items[i];
      if (item.runnable()) line_of_id[id_key(item.id)] = i;
      if (!item.id.is_null()) all_ids.insert(id_key(item.id));
    }
    std::vector<std::string> kept;
    if (!args_.count("force"))
      for (std::string& line : read_journal(out_path_)) {
        const nlohmann::json id = record_id(input_.kind, parse_json_input(line, "a line of the output"));
        KILN_CHECK(id.is_null() || all_ids.count(id_key(id)),
                   "the output '{}' holds a result for id {}, which the input does not have: it is another batch's "
                   "output; give -o another path, or --force to overwrite it",
                   out_path_, id_key(id));
        const auto it = line_of_id.find(id_key(id));
        if (it == line_of_id.end() || !records_[it->second].empty()) continue;
        records_[it->second] = line;
        kept.push_back(std::move(line));
      }
    tally_.total = int64_t(input_.items.size());
    tally_.resumed = int64_t(kept.size());
    replace_with_lines(out_path_, kept);  // drops a torn last line and the records written again
  }

  void write(BatchJournal& journal, size_t i, const BatchOutcome& outcome) {
    records_[i] = format_record(input_.kind, input_.items[i], outcome, context_);
    journal.append(records_[i]);
    ++(input_.items[i].runnable() && outcome.error.empty() ? tally_.ok : tally_.failed);
    meter_->update(tally_);
  }

  const cxxopts::ParseResult& args_;
  const BatchInput& input_;
  std::string out_path_;
  std::vector<std::string> records_;  // [lines] the record of each line, once written
  RecordContext context_;
  BatchTally tally_;
  std::optional<BatchMeter> meter_;
  std::optional<BatchStageTotals> profile_;
};

}  // namespace

int cmd_batch(int argc, char** argv) {
  cxxopts::Options options(argv[0],
                           "Run every line of IN (plain prompts, JSON lines or an OpenAI batch file) through the "
                           "model with continuous batching; one JSON record per line goes to OUT.");
  add_model_options(options);
  add_sampling_options(options);
  add_chat_options(options);
  options.add_options()("input", "the requests, one per line", cxxopts::value<std::string>())(
      "o,output", "the results (JSON lines); an existing file is resumed", cxxopts::value<std::string>())(
      "n,n-predict", "tokens to generate per request unless it says (-1: until the end of turn or a full context)",
      cxxopts::value<int64_t>()->default_value("-1"))(
      "stop", "stop before this text unless the request says (repeatable)", cxxopts::value<std::vector<std::string>>())(
      "chat", "wrap plain prompts in the model's chat template as a user turn")(
      "no-bos", "do not prepend BOS to prompts that skip the chat template")(
      "parallel", "sequences decoding at once (0: as many as the KV memory holds, at most 256 and the input's lines)",
      cxxopts::value<int64_t>()->default_value("0"))(
      "kv-memory",
      "memory for the KV cache of all sequences (512M, 2G; auto: 1G on the CPU, on a GPU what it has free beside the "
      "model, at most what the sequences can use)",
      cxxopts::value<std::string>()->default_value("auto"))(
      "b,batch-size", "tokens per forward step", cxxopts::value<int64_t>()->default_value("512"))(
      "force", "start over instead of resuming an existing OUT")(
      "no-sort", "leave OUT in completion order instead of input order")(
      "profile", "print at the end where the forward steps' time went, stage by stage (CUDA; its steps then run "
      "without CUDA graphs)");
  options.parse_positional({"input"});
  options.positional_help("IN");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  KILN_CHECK(args.count("input"), "give the requests file: kiln batch IN -o OUT.jsonl -m MODEL.kiln");
  KILN_CHECK(args.count("output"), "give the results file: -o OUT.jsonl");
  const std::string in_path = args["input"].as<std::string>();
  const std::string out_path = args["output"].as<std::string>();
  KILN_CHECK(!std::filesystem::is_directory(out_path), "'{}' is a folder: give -o a file name", out_path);
  check_not_same_file(in_path, out_path);
  const BatchInput input = parse_batch_input(read_input(in_path));
  KILN_CHECK(!input.items.empty(), "the input '{}' has no lines", in_path);
  return BatchRun(args, input, out_path).run();
}

}  // namespace kiln
