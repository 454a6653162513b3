// Sequence: the control-plane view of one request (no tensors). The engine owns the runtime parts
// (sampler, detokenizer, pruning policy) beside it; the scheduler only moves Sequences between
// queues and decides what runs in a step.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "engine/request.h"

namespace asl::sched {

using Clock = std::chrono::steady_clock;

// kWaiting: queued (or preempted). kPrefilling: admitted, its prefill in flight (it may take several
// engine steps). kRunning: prefilled, decoding one token per step. kFinished: done.
enum class SeqState { kWaiting, kPrefilling, kRunning, kFinished };

struct Sequence {
  RequestId id = 0;
  SeqState state = SeqState::kWaiting;
  int64_t num_prompt_tokens = 0;
  // Hash of the prompt's token ids: identical prompts admitted in one step are prefilled once
  // (the runner shares their rows), so the step's prefill budget charges them once.
  uint64_t prompt_hash = 0;
  int max_tokens = 0;
  std::vector<TokenId> output_ids;     // every generated token so far (kept across preemption)
  // Output tokens whose K/V is in the cache. Decode feeds output_ids[num_fed_outputs]; a
  // re-admitted (preempted) sequence replays its outputs this way before sampling again.
  int64_t num_fed_outputs = 0;
  int64_t next_position = 0;           // logical position of the next fed token
  // Block bounds from BlockAccounting::Bounds at Submit.
  int64_t admission_blocks = 0;        // upper bound of the prompt's KV blocks after pruning
  int64_t lifetime_blocks = 0;         // upper bound of all its blocks: prompt after pruning + max_tokens
  int64_t cached_prefix_tokens = 0;    // prompt tokens its (last) admission found in the prefix cache
  uint64_t arrival_seq = 0;            // FIFO order of arrival
  int num_preemptions = 0;
  Clock::time_point arrival_time;
  Clock::time_point first_scheduled_time;
  Clock::time_point first_token_time;
  Clock::time_point last_token_time;
  bool scheduled_once = false;
  bool cancel_requested = false;

  int64_t num_prompt_and_fed() const { return num_prompt_tokens + num_fed_outputs; }
};

}  // namespace asl::sched
