#include "engine/sched/scheduler.h"

#include <algorithm>
#include <utility>

namespace asl::sched {

void Scheduler::AddWaiting(Sequence* seq) {
  seq->state = SeqState::kWaiting;
  // Keep the queue in arrival order so a preempted sequence resumes before later arrivals.
  auto it = std::find_if(waiting_.begin(), waiting_.end(),
                         [&](const Sequence* s) { return s->arrival_seq > seq->arrival_seq; });
  waiting_.insert(it, seq);
}

void Scheduler::Remove(Sequence* seq) {
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), seq), waiting_.end());
  running_.erase(std::remove(running_.begin(), running_.end(), seq), running_.end());
}

size_t Scheduler::num_prefilling() const {
  return static_cast<size_t>(std::count_if(running_.begin(), running_.end(),
                                           [](const Sequence* s) { return s->state == SeqState::kPrefilling; }));
}

void Scheduler::MarkPrefilled(Sequence* seq) {
  if (seq->state == SeqState::kPrefilling) seq->state = SeqState::kRunning;
}

StepPlan Scheduler::Schedule(const BlockAccounting& blocks) {
  StepPlan plan;
  plan.prefill_budget = config_.step_prefill_budget;
  int64_t free_blocks = blocks.num_free_blocks();

  // Every running sequence claims what it may write this step: a decoding one its next token, one
  // mid-prefill the rest of its prompt. Preempt the latest arrival until the claims fit (as vLLM
  // does): the oldest requests always progress, so sequences cannot keep preempting each other.
  auto claim_of = [&](const std::vector<Sequence*>& seqs) {
    int64_t n = 0;
    for (const Sequence* s : seqs) n += blocks.ForStep(*s);
    return n;
  };
  while (!running_.empty() && claim_of(running_) > free_blocks) {
    auto victim = std::max_element(running_.begin(), running_.end(),
                                   [](const Sequence* a, const Sequence* b) { return a->arrival_seq < b->arrival_seq; });
    Sequence* v = *victim;
    running_.erase(victim);
    v->num_preemptions++;
    plan.preempted.push_back(v);
  }
  // The engine frees the victims' blocks before it runs the plan; count them as free for admission
  // only after that, i.e. not in this step (keeps this function free of pool internals).
  free_blocks -= claim_of(running_);
  bool prefill_in_flight = false;
  for (Sequence* s : running_) {
    if (s->state == SeqState::kRunning) plan.decode.push_back(s);
    prefill_in_flight |= s->state == SeqState::kPrefilling;
  }

  // Admission in arrival order, into a new prefill batch only once the last one has finished; a
  // preempted sequence was just put back and must wait a step.
  int64_t prefill_tokens = 0;
  std::vector<std::pair<uint64_t, int64_t>> prompts_this_step;  // (hash, tokens): charged once each
  int64_t reserved = 0;  // kReserve: the lifetimes of the running sequences
  for (const Sequence* s : running_) reserved += s->lifetime_blocks;
  while (!prefill_in_flight && !waiting_.empty() && static_cast<int>(running_.size()) < config_.max_num_seqs) {
    Sequence* s = waiting_.front();
    const bool repeated = std::find(prompts_this_step.begin(), prompts_this_step.end(),
                                    std::make_pair(s->prompt_hash, s->num_prompt_tokens)) != prompts_this_step.end();
    const int64_t tokens = repeated ? 0 : s->num_prompt_tokens;
    const int64_t need = blocks.ToAdmit(*s);  // must be free now, in either mode
    if (need > free_blocks) break;
    if (config_.admission == AdmissionMode::kReserve && reserved + blocks.Reserved(*s) > blocks.num_total_blocks()) {
      break;
    }
    if (!plan.prefill.empty() && prefill_tokens + tokens > config_.max_prefill_tokens) break;
    waiting_.pop_front();
    free_blocks -= need;
    reserved += blocks.Reserved(*s);
    prefill_tokens += tokens;
    if (!repeated) prompts_this_step.emplace_back(s->prompt_hash, s->num_prompt_tokens);
    s->state = SeqState::kPrefilling;
    running_.push_back(s);
    plan.prefill.push_back(s);
  }
  for (Sequence* v : plan.preempted) AddWaiting(v);
  return plan;
}

}  // namespace asl::sched
