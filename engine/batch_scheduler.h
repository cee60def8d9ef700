// Continuous batching: many independent requests decode together. Each step runs one forward over the
// tokens of every active sequence (decode tokens and chunks of prompts mixed); a finished sequence
// frees its KV blocks and its slot is refilled from the queue at once. Sampling is per sequence with
// its own seed, so a sequence's output is the same alone or in a batch.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/generator.h"
#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

class BatchBackend;

struct BatchRequest {
  int64_t index = 0;               // the caller's handle, returned in the result
  std::vector<int32_t> prompt;     // the whole prompt, already templated and tokenized
  int64_t max_tokens = -1;         // < 0: until the end of turn or the sequence's context is full
  SamplerParams sampling;
  std::vector<std::string> stops;  // generation ends before any of these strings
};

struct BatchResult {
  int64_t index = 0;
  std::string text;                // generated text (without the stop string)
  int64_t n_prompt = 0;
  int64_t n_generated = 0;         // counts an end-of-turn token, as Generator does
  FinishReason finish = FinishReason::Length;
  std::string error;               // non-empty: the request failed (text is empty), the others go on
};

struct BatchOptions {
  int64_t max_parallel = 0;        // sequences decoding at once; <= 0: as many as the KV memory holds
  int64_t max_step_tokens = 512;   // tokens per forward step (prompt chunks fill what decode leaves)
  int sampling_threads = 0;        // threads sampling the step's sequences; <= 0: all cores, at most 16
};

struct BatchProgress {
  int64_t n_active = 0;
  int64_t n_queued = 0;
  int64_t n_prompt_tokens = 0;     // evaluated so far
  int64_t n_generated_tokens = 0;  // so far
  int64_t n_steps = 0;             // forward steps run
  double forward_seconds = 0;      // spent in the backend's forward (the device's work and its wait)
  double sampling_seconds = 0;     // spent drawing the next tokens from the logits
};

// The scheduler owns the backend's sequence slots and KV pool for its lifetime: nothing else may
// reserve on the backend meanwhile.
class BatchScheduler {
 public:
  BatchScheduler(BatchBackend& backend, const Tokenizer& tokenizer, const BatchOptions& options);
  ~BatchScheduler();

  // Queues a request. A request that can never run (empty prompt, a token outside the vocabulary, a
  // prompt the context cannot hold, more KV than the whole pool, bad sampling parameters) comes back
  // from the next step() as a result with an error.
  void submit(BatchRequest request);
  // Runs one forward step; returns the requests that finished during it (in any order).
  std::vector<BatchResult> step();
  // True when nothing is queued or active.
  bool idle() const;
  BatchProgress progress() const;
  // Sequences that may decode at once (what max_parallel, the backend's slots and step size allow).
  int64_t max_parallel() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace kiln
