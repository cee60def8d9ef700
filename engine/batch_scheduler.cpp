#include "engine/batch_scheduler.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>
#include <string>
#include <thread>

#include "engine/batch_backend.h"
#include "engine/error.h"
#include "engine/stop_filter.h"
#include "kernels/cpu/thread_pool.h"

namespace kiln {
namespace {

// One admitted request. Never moves (the stop filter's sink points at text).
struct Sequence {
  Sequence(BatchRequest r, int32_t slot_, int64_t limit_, int64_t n_vocab, const Tokenizer& tokenizer)
      : request(std::move(r)),
        slot(slot_),
        limit(limit_),
        sampler(request.sampling, n_vocab),
        decoder(tokenizer),
        stops(request.stops, [this](std::string_view piece) { text += piece; }) {}

  BatchRequest request;
  int32_t slot;
  int64_t limit;              // positions reserved: the context is full when they are all used
  Sampler sampler;
  StreamDecoder decoder;
  std::string text;
  StopFilter stops;
  int64_t n_evaluated = 0;    // prompt tokens run so far
  int64_t n_past = 0;         // positions in the KV cache
  int32_t next_token = -1;    // sampled and not yet run; >= 0 once the prompt is done
  int64_t n_generated = 0;
  bool prompt_done() const { return n_evaluated == int64_t(request.prompt.size()); }
};

BatchResult error_result(const BatchRequest& request, std::string message) {
  BatchResult r;
  r.index = request.index;
  r.n_prompt = int64_t(request.prompt.size());
  r.error = std::move(message);
  return r;
}

}  // namespace

struct BatchScheduler::State {
  BatchBackend& backend;
  const Tokenizer& tokenizer;
  int64_t n_vocab = 0;
  int64_t n_ctx = 0;
  int64_t step_tokens = 0;
  int64_t pool_positions = 0;  // the whole KV pool, counted when the scheduler took it
  std::deque<BatchRequest> queue;
  std::vector<BatchResult> rejected;                // returned by the next step
  std::vector<std::unique_ptr<Sequence>> slots;     // [max_parallel]; null: free
  std::vector<Sequence*> active;                    // in admission order: older prompts run first
  std::vector<BatchToken> rows;                     // [step_tokens]
  std::vector<int32_t> logit_rows;                  // [max_parallel]
  std::vector<Sequence*> logit_owners;              // [max_parallel]
  std::vector<int32_t> sampled;                     // [max_parallel] each owner's token, -1 when none
  std::vector<std::string> sample_errors;           // [max_parallel] why an owner's logits were refused
  std::unique_ptr<ThreadPool> pool;                 // samples the owners in parallel
  BatchProgress progress;

  State(BatchBackend& b, const Tokenizer& t) : backend(b), tokenizer(t) {}

  // Why the request can never run, or "" when it can.
  std::string check(const BatchRequest& request) const {
    const int64_t n = int64_t(request.prompt.size());
    if (n == 0) return "the prompt is empty: give some text";
    for (int32_t token : request.prompt)
      if (token < 0 || token >= n_vocab) return fmt::format("token {} is outside the vocabulary of {}", token, n_vocab);
    if (n >= n_ctx) return fmt::format("the prompt has {} tokens but the context holds {}: shorten it or raise -c", n, n_ctx);
    if (n >= pool_positions)
      return fmt::format("the prompt has {} tokens but the KV memory holds {} positions: shorten it or give more KV memory",
                         n, pool_positions);
    try {
      request.sampling.validate();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }

  // Positions to reserve: what the request can use, within the context and the pool.
  int64_t need(const BatchRequest& request) const {
    const int64_t n = int64_t(request.prompt.size());
    const int64_t want = request.max_tokens < 0 ? n_ctx : std::min(n_ctx, n + request.max_tokens);
    return std::min(want, pool_positions);
  }

  bool admit_one() {
    auto free_slot = std::find(slots.begin(), slots.end(), nullptr);
    if (free_slot == slots.end() || queue.empty()) return false;
    const int32_t slot = int32_t(free_slot - slots.begin());
    BatchRequest& request = queue.front();
    const int64_t limit = need(request);
    if (!backend.reserve(slot, limit)) {
      if (!active.empty()) return false;  // wait for a sequence to finish
      // Nothing else holds blocks, so waiting would not help.
      rejected.push_back(error_result(request, "the KV pool could not hold this request: give more KV memory"));
      queue.pop_front();
      return true;
    }
    BatchResult failed = error_result(request, "");
    try {
      *free_slot = std::make_unique<Sequence>(std::move(request), slot, limit, n_vocab, tokenizer);
    } catch (const Error& e) {
      backend.release(slot);
      failed.error = e.what();
      rejected.push_back(std::move(failed));
      queue.pop_front();
      return true;
    }
    queue.pop_front();
    Sequence& s = **free_slot;
    for (int32_t token : s.request.prompt) s.sampler.accept(token);  // the penalty window, as Generator
    active.push_back(&s);
    return true;
  }

  // Decode rows for every generating sequence, then prompt chunks, oldest first, in what is left.
  void build_rows() {
    rows.clear();
    logit_rows.clear();
    logit_owners.clear();
    for (Sequence* s : active)
      if (s->prompt_done()) {
        logit_rows.push_back(int32_t(rows.size()));
        logit_owners.push_back(s);
        rows.push_back({s->next_token, s->slot, int32_t(s->n_past)});
      }
    for (Sequence* s : active) {
      if (s->prompt_done()) continue;
      const int64_t room = step_tokens - int64_t(rows.size());
      if (room <= 0) break;
      const int64_t n_prompt = int64_t(s->request.prompt.size());
      const int64_t chunk = std::min(room, n_prompt - s->n_evaluated);
      for (int64_t i = 0; i < chunk; ++i) {
        const int64_t at = s->n_evaluated + i;
        rows.push_back({s->request.prompt[size_t(at)], s->slot, int32_t(at), true});
      }
      if (s->n_evaluated + chunk == n_prompt) {
        logit_rows.push_back(int32_t(rows.size() - 1));
        logit_owners.push_back(s);
      }
    }
  }

  // Counts what the forward ran into each sequence's state.
  void account_rows() {
    for (const BatchToken& row : rows) {
      Sequence& s = *slots[size_t(row.seq)];
      ++s.n_past;
      if (s.prompt_done()) continue;  // a decode row
      ++s.n_evaluated;
      ++progress.n_prompt_tokens;
    }
  }

  static bool at_max_tokens(const Sequence& s) {
    return s.request.max_tokens >= 0 && s.n_generated >= s.request.max_tokens;
  }

  // The k best logits a row this step must return for every owner to draw from them alone (what the
  // backend's forward_top takes), or 0: whole rows.
  int64_t step_top_k() const {
    int64_t k = 0;
    for (const Sequence* s : logit_owners) {
      const int64_t needed = s->sampler.top_needed();
      if (needed == 0) return 0;
      k = std::max(k, needed);
    }
    return k <= backend.max_top_k() ? k : 0;
  }

  // Every owner's next token, each from its own sampler, on the pool: 256 rows of a 32K vocabulary take
  // milliseconds on one core. A sampler's draws depend on its sequence alone, so the order does not matter.
  // draw(i, sampler) is owner i's token.
  template <typename Draw>
  void sample_owners(const Draw& draw) {
    const size_t n = logit_owners.size();
    sampled.assign(n, -1);
    sample_errors.assign(n, {});
    pool->parallel_for(int64_t(n), [&](int64_t begin, int64_t end) {
      for (auto i = size_t(begin); i < size_t(end); ++i) {
        Sequence& s = *logit_owners[i];
        if (at_max_tokens(s)) continue;
        try {
          sampled[i] = draw(i, s.sampler);
        } catch (const Error& e) {  // a NaN logit: this request fails, the others go on
          sample_errors[i] = e.what();
        }
      }
    });
  }

  // One forward step over rows and the owners' draws from its logits (whole rows or the k best of each).
  void forward_and_sample() {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const auto n_rows = int64_t(rows.size()), n_owners = int64_t(logit_rows.size());
    const int64_t k = step_top_k();
    TopLogits top;
    float* logits = nullptr;
    if (k > 0) {
      top = backend.forward_top(rows.data(), n_rows, logit_rows.data(), n_owners, k);
    } else {
      logits = backend.logits_buffer(n_owners);
      backend.forward(rows.data(), n_rows, logit_rows.data(), n_owners, logits);
    }
    const auto forwarded = Clock::now();
    progress.forward_seconds += std::chrono::duration<double>(forwarded - start).count();
    ++progress.n_steps;
    account_rows();
    if (k > 0)
      sample_owners([&](size_t i, Sampler& sampler) {
        return sampler.sample_top(top.logits + i * size_t(k), top.ids + i * size_t(k), size_t(k),
                                  top.first_invalid[i]);
      });
    else
      sample_owners([&](size_t i, Sampler& sampler) { return sampler.sample(logits + i * size_t(n_vocab)); });
    progress.sampling_seconds += std::chrono::duration<double>(Clock::now() - forwarded).count();
  }

  // Generator's loop body after a forward and the sampling: decide whether to go on. Returns why the
  // sequence finished, or nothing when it goes on with next_token.
  std::optional<FinishReason> advance(Sequence& s, int32_t token) {
    if (at_max_tokens(s)) return FinishReason::Length;
    ++s.n_generated;
    ++progress.n_generated_tokens;
    if (tokenizer.is_eog(token)) return FinishReason::EndOfTurn;
    s.sampler.accept(token);
    if (s.stops.push(s.decoder.push(token))) return FinishReason::StopString;
    if (s.n_past >= s.limit) return FinishReason::ContextFull;
    s.next_token = token;
    return std::nullopt;
  }

  BatchResult finish(Sequence& s, FinishReason reason, std::string error) {
    BatchResult r;
    r.index = s.request.index;
    r.n_prompt = int64_t(s.request.prompt.size());
    r.n_generated = s.n_generated;
    r.finish = reason;
    if (error.empty()) {
      if (reason != FinishReason::StopString) {
        s.stops.push(s.decoder.flush());
        s.stops.flush();
      }
      r.text = std::move(s.text);
    }
    r.error = std::move(error);
    backend.release(s.slot);
    active.erase(std::find(active.begin(), active.end(), &s));
    slots[size_t(s.slot)].reset();
    return r;
  }
};

BatchScheduler::BatchScheduler(BatchBackend& backend, const Tokenizer& tokenizer, const BatchOptions& options)
    : state_(std::make_unique<State>(backend, tokenizer)) {
  State& st = *state_;
  st.n_vocab = backend.config().n_vocab;
  st.n_ctx = backend.n_ctx();
  st.step_tokens = std::min(options.max_step_tokens > 0 ? options.max_step_tokens : int64_t(512),
                            backend.max_step_tokens());
  KILN_CHECK(st.step_tokens >= 1, "a batch step must hold at least one token");
  st.pool_positions = backend.free_blocks() * backend.block_positions();
  KILN_CHECK(st.pool_positions >= 2, "the KV memory holds {} positions: give it more", st.pool_positions);
  int64_t parallel = options.max_parallel > 0 ? options.max_parallel : backend.max_sequences();
  // Each sequence holds at least one block, and its decode row must fit a step.
  parallel = std::min({parallel, backend.max_sequences(), backend.free_blocks(), st.step_tokens});
  KILN_CHECK(parallel >= 1, "the backend has no sequence slots");
  st.slots.resize(size_t(parallel));
  st.rows.reserve(size_t(st.step_tokens));
  st.logit_rows.reserve(size_t(parallel));
  st.logit_owners.reserve(size_t(parallel));
  const int threads = options.sampling_threads > 0
                          ? options.sampling_threads
                          : int(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1, 16));
  st.pool = std::make_unique<ThreadPool>(int(std::min<int64_t>(threads, parallel)));
}

BatchScheduler::~BatchScheduler() {
  for (const auto& s : state_->slots)
    if (s) state_->backend.release(s->slot);
}

void BatchScheduler::submit(BatchRequest request) {
  State& st = *state_;
  std::string problem = st.check(request);
  if (!problem.empty()) {
    st.rejected.push_back(error_result(request, std::move(problem)));
    return;
  }
  if (request.max_tokens == 0) {  // Generator evaluates the prompt and stops: the same result, no work
    BatchResult r;
    r.index = request.index;
    r.n_prompt = int64_t(request.prompt.size());
    st.rejected.push_back(std::move(r));
    return;
  }
  st.queue.push_back(std::move(request));
}

std::vector<BatchResult> BatchScheduler::step() {
  State& st = *state_;
  while (st.admit_one()) {
  }
  std::vector<BatchResult> results = std::move(st.rejected);
  st.rejected.clear();
  st.build_rows();
  if (st.rows.empty()) return results;

  st.forward_and_sample();
  for (size_t i = 0; i < st.logit_owners.size(); ++i) {
    Sequence& s = *st.logit_owners[i];
    std::string& error = st.sample_errors[i];
    const std::optional<FinishReason> reason = error.empty() ? st.advance(s, st.sampled[i]) : FinishReason::Length;
    if (reason) results.push_back(st.finish(s, *reason, std::move(error)));
  }
  return results;
}

bool BatchScheduler::idle() const { return state_->queue.empty() && state_->active.empty() && state_->rejected.empty(); }

BatchProgress BatchScheduler::progress() const {
  BatchProgress p = state_->progress;
  p.n_active = int64_t(state_->active.size());
  p.n_queued = int64_t(state_->queue.size());
  return p;
}

int64_t BatchScheduler::max_parallel() const { return int64_t(state_->slots.size()); }

}  // namespace kiln
