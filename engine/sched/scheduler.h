// Scheduler: iteration-level continuous batching (docs/architecture.md, "One step of the engine
// loop"). Each step it plans one decode token for every sequence that has finished its prefill,
// preempting the latest arrivals (recompute) when the pool cannot take the step; gives the
// prefill in flight the step's prefill budget; and, only when no prefill is in flight, admits
// waiting sequences in arrival order while their post-pruning KV fits and the prefill token
// budget allows: they form the next prefill. It owns no KV and does no block arithmetic of its
// own: BlockAccounting answers every block question.
//
// NOTE on admission: a request is admitted by the blocks it will hold *after* pruning, never by its
// full prompt length; that is what turns pruning into concurrency. Two modes:
// - kReserve (default, like TGI): the blocks of its whole life, prompt KV after pruning (an upper
//   bound from its policy) plus max_tokens, must fit beside the lifetimes of the running sequences;
//   decode then never runs out and nothing is preempted. Measured on CPU (bench/results/engine.md),
//   where recomputing a 4k prompt costs seconds, this doubles throughput at high concurrency.
// - kOptimistic (like vLLM): only the prompt's KV after pruning plus one block per layer of decode
//   headroom must fit the free blocks now; decode grows block by block and running out preempts the
//   latest arrival (recompute), also one whose prefill is half done. More sequences start; some pay
//   a second prefill.
// In both, a prefill in flight keeps the rest of its prompt's blocks claimed until it ends
// (BlockAccounting::ForStep), so decode between its slices never takes them.
//
// NOTE on prefill order: decode first, then the prefill slice, every step; prefills run one packed
// batch at a time in arrival order (FCFS), and new prompts wait for the next batch (see
// docs/architecture.md, "Layer-sliced prefill", for why they do not start beside one mid-way).
//
// Thread: engine thread only.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "engine/sched/block_accounting.h"
#include "engine/sched/sequence.h"

namespace asl::sched {

enum class AdmissionMode { kReserve, kOptimistic };

struct SchedulerConfig {
  int max_num_seqs = 64;
  int max_prefill_tokens = 8192;   // prompt tokens admitted into one prefill batch
  // Estimated prefill work per step, in token-layers (runner::PrefillCostModel); 0 = no limit:
  // every prefill runs whole in the step that admits it.
  double step_prefill_budget = 0;
  AdmissionMode admission = AdmissionMode::kReserve;
};

struct StepPlan {
  std::vector<Sequence*> decode;     // prefilled and running: one token each
  std::vector<Sequence*> prefill;    // admitted this step: the next prefill batch starts with them
  std::vector<Sequence*> preempted;  // moved back to waiting: the engine frees their KV
  double prefill_budget = 0;         // work the step's prefill may do (0 = no limit)
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config) : config_(config) {}

  void AddWaiting(Sequence* seq);
  // Removes a sequence from whichever queue holds it (cancel, finish, error).
  void Remove(Sequence* seq);
  StepPlan Schedule(const BlockAccounting& blocks);
  // The prefill of `seq` (admitted by an earlier plan) has completed: it decodes from the next step.
  void MarkPrefilled(Sequence* seq);

  size_t num_waiting() const { return waiting_.size(); }
  size_t num_running() const { return running_.size(); }  // prefilling or decoding
  size_t num_prefilling() const;
  const std::deque<Sequence*>& waiting() const { return waiting_; }
  const std::vector<Sequence*>& running() const { return running_; }

 private:
  SchedulerConfig config_;
  std::deque<Sequence*> waiting_;   // front = next to admit (preempted sequences go back to the front)
  std::vector<Sequence*> running_;  // prefilling or decoding, in admission order
};

}  // namespace asl::sched
