// Scheduler: iteration-level continuous batching (docs/architecture.md, "One step of the engine
// loop"). Each step it admits waiting sequences in arrival order while their post-pruning KV fits
// in the free blocks and the prefill token budget allows, then plans one decode token for every
// running sequence, preempting the latest arrivals (recompute) when the pool cannot take the
// step's new blocks. It owns no KV: the engine tells it the block facts through BlockFacts.
//
// NOTE on admission: a request is admitted by the blocks it will hold *after* pruning, never by its
// full prompt length; that is what turns pruning into concurrency. Two modes:
// - kReserve (default, like TGI): the blocks of its whole life, prompt KV after pruning (an upper
//   bound from its policy) plus max_tokens, must fit beside the lifetimes of the running sequences;
//   decode then never runs out and nothing is preempted. Measured on CPU (bench/results/engine.md),
//   where recomputing a 4k prompt costs seconds, this doubles throughput at high concurrency.
// - kOptimistic (like vLLM): only the prompt's KV after pruning plus one block per layer of decode
//   headroom must fit the free blocks now; decode grows block by block and running out preempts the
//   latest arrival (recompute). More sequences start; some pay a second prefill.
//
// Thread: engine thread only.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "engine/sched/sequence.h"

namespace asl::sched {

enum class AdmissionMode { kReserve, kOptimistic };

struct SchedulerConfig {
  int max_num_seqs = 64;
  int max_prefill_tokens = 8192;
  int num_layers = 1;
  int block_size = 16;
  AdmissionMode admission = AdmissionMode::kReserve;
};

// What the scheduler needs to know about KV blocks, answered by the engine's pool.
class BlockFacts {
 public:
  virtual ~BlockFacts() = default;
  virtual int64_t num_free_blocks() const = 0;
  virtual int64_t num_total_blocks() const = 0;
  // New blocks `seq` needs to append one token to every layer.
  virtual int64_t BlocksForNextToken(const Sequence& seq) const = 0;
};

struct StepPlan {
  std::vector<Sequence*> prefill;    // admitted this step: prefill their prompt
  std::vector<Sequence*> decode;     // running: one token each
  std::vector<Sequence*> preempted;  // moved back to waiting: the engine frees their KV
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config) : config_(config) {}

  void AddWaiting(Sequence* seq);
  // Removes a sequence from whichever queue holds it (cancel, finish, error).
  void Remove(Sequence* seq);
  StepPlan Schedule(const BlockFacts& blocks);

  size_t num_waiting() const { return waiting_.size(); }
  size_t num_running() const { return running_.size(); }
  const std::deque<Sequence*>& waiting() const { return waiting_; }
  const std::vector<Sequence*>& running() const { return running_; }

 private:
  SchedulerConfig config_;
  std::deque<Sequence*> waiting_;   // front = next to admit (preempted sequences go back to the front)
  std::vector<Sequence*> running_;  // in admission order
};

}  // namespace asl::sched
