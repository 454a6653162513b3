// OutputProcessor: the last stage of an engine step (nano-vllm's scheduler.postprocess, vLLM's
// update_from_output), and the owner of every request's runtime state (Entry) on the engine
// thread. For each sampled token it appends the token to its sequence, feeds the penalties,
// detokenizes (also each token's own text and bytes for logprobs), matches stop tokens and stop
// strings and emits the chunk; when a request ends
// (stop, length, cancel, error, abort) it frees the request's KV blocks and queue slot at once,
// sends its one FinishEvent and forgets it. Nothing else in the engine ends a request.
//
// Thread: engine thread only (sinks and metrics are called from here).
#pragma once

#include <memory>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"
#include "engine/engine_entry.h"
#include "engine/waiting_slots.h"

namespace asl {

namespace kv { class KvCache; }
namespace tok { class Tokenizer; }
namespace sched { class Scheduler; }

class OutputProcessor {
 public:
  // eos_ids: tokens that end a request unless it asks ignore_eos. max_model_len bounds prompt +
  // outputs. waiting: the queue limit's slots, released when a never-scheduled request finishes.
  // tokenizer (the text of logprob tokens), kv, scheduler, metrics (may be null) and waiting must
  // outlive this object.
  OutputProcessor(std::vector<TokenId> eos_ids, int max_model_len, const tok::Tokenizer* tokenizer, kv::KvCache* kv,
                  sched::Scheduler* scheduler, EngineMetrics* metrics, WaitingSlots* waiting)
      : eos_ids_(std::move(eos_ids)), max_model_len_(max_model_len), tokenizer_(tokenizer), kv_(kv),
        scheduler_(scheduler), metrics_(metrics), waiting_(waiting) {}

  // The request table.
  Entry& Add(std::unique_ptr<Entry> entry);
  Entry* Find(RequestId id);
  const Entry* Find(RequestId id) const;
  std::vector<Entry*> All();
  bool empty() const { return entries_.empty(); }

  // Takes one sampled token of `e` and emits it; finishes the request when a stop token, a stop
  // string, max_tokens or the context length says so (then `e` is destroyed).
  void Accept(Entry& e, const sample::SampleResult& result);
  // Ends the request: frees its KV blocks and its place in the scheduler's queues, sends exactly
  // one FinishEvent (status is reported for kError and kAbort) and destroys `e`.
  void Finish(Entry& e, FinishReason reason, Status status = Status::Ok());
  // Finish(kError) for each of `seqs` still known, with `status`'s message.
  void FailAll(const std::vector<sched::Sequence*>& seqs, const Status& status);

 private:
  std::vector<TokenId> eos_ids_;
  int max_model_len_;
  const tok::Tokenizer* tokenizer_;
  kv::KvCache* kv_;
  sched::Scheduler* scheduler_;
  EngineMetrics* metrics_;
  WaitingSlots* waiting_;
  std::unordered_map<RequestId, std::unique_ptr<Entry>> entries_;
};

}  // namespace asl
