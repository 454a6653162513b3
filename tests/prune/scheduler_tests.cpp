// The scheduler's admission, preemption and prefill decisions, and BlockAccounting's arithmetic,
// on tiny configurations with exact numbers (no model, no tensors).
#include <gtest/gtest.h>

#include <map>

#include "engine/sched/block_accounting.h"
#include "engine/sched/scheduler.h"

namespace asl {
namespace {


// The pool's facts for BlockAccounting: free and total blocks, and each sequence's stored tokens
// per layer (1 token in every layer unless set: no new block for the next token).
struct FakePool : sched::PoolFacts {
  int64_t free = 0;
  int64_t total = int64_t{1} << 40;
  std::map<RequestId, int64_t> length;
  int64_t num_free_blocks() const override { return free; }
  int64_t num_total_blocks() const override { return total; }
  int64_t Length(RequestId seq, int /*layer*/) const override {
    auto it = length.find(seq);
    return it == length.end() ? 1 : it->second;
  }
};

// Block size 16, num_layers layers over a FakePool.
struct FakeBlocks : FakePool {
  explicit FakeBlocks(int num_layers = 2) : accounting(num_layers, 16, this) {}
  operator const sched::BlockAccounting&() const { return accounting; }
  sched::BlockAccounting accounting;
};

sched::SchedulerConfig Config(int max_num_seqs, int max_prefill_tokens,
                              sched::AdmissionMode mode = sched::AdmissionMode::kReserve) {
  sched::SchedulerConfig c;
  c.max_num_seqs = max_num_seqs;
  c.max_prefill_tokens = max_prefill_tokens;
  c.admission = mode;
  return c;
}

// What the engine does when a prefill completes.
void Prefilled(sched::Scheduler& sch, std::initializer_list<sched::Sequence*> seqs) {
  for (sched::Sequence* s : seqs) sch.MarkPrefilled(s);
}

sched::Sequence MakeSeq(RequestId id, int64_t prompt, int64_t blocks) {
  sched::Sequence s;
  s.id = id;
  s.arrival_seq = id;
  s.num_prompt_tokens = prompt;
  s.admission_blocks = blocks;
  return s;
}

TEST(Scheduler, AdmitsByPostPruningBlocksInArrivalOrder) {
  sched::Scheduler sch(Config(/*max_num_seqs=*/8, /*max_prefill_tokens=*/100000));
  auto a = MakeSeq(1, 4000, 10), b = MakeSeq(2, 4000, 10), c = MakeSeq(3, 4000, 10);
  sch.AddWaiting(&a);
  sch.AddWaiting(&b);
  sch.AddWaiting(&c);
  FakeBlocks blocks;
  blocks.free = 25;  // (10 + 2) * 2 = 24 fit, the third does not
  sched::StepPlan plan = sch.Schedule(blocks);
  ASSERT_EQ(plan.prefill.size(), 2u);
  EXPECT_EQ(plan.prefill[0]->id, 1u);
  EXPECT_EQ(plan.prefill[1]->id, 2u);
  EXPECT_TRUE(plan.decode.empty());
  EXPECT_EQ(sch.num_waiting(), 1u);
}

TEST(Scheduler, PreemptsLatestArrivalWhenDecodeDoesNotFit) {
  sched::Scheduler sch(Config(8, 100000));
  auto a = MakeSeq(1, 10, 1), b = MakeSeq(2, 10, 1), c = MakeSeq(3, 10, 1);
  for (auto* s : {&a, &b, &c}) sch.AddWaiting(s);
  FakeBlocks blocks;
  blocks.free = 100;
  ASSERT_EQ(sch.Schedule(blocks).prefill.size(), 3u);
  Prefilled(sch, {&a, &b, &c});
  blocks.free = 4;
  blocks.length = {{1, 16}, {2, 16}, {3, 16}};  // every layer's block is full: 2 new blocks each
  sched::StepPlan plan = sch.Schedule(blocks);
  ASSERT_EQ(plan.preempted.size(), 1u);
  EXPECT_EQ(plan.preempted[0]->id, 3u);
  EXPECT_EQ(plan.decode.size(), 2u);
  EXPECT_EQ(sch.waiting().front()->id, 3u);
  EXPECT_EQ(c.num_preemptions, 1);
}

TEST(Scheduler, ReserveAdmitsByLifetimeOptimisticByPrompt) {
  // Prompt KV 10 blocks each (+2 headroom over 2 layers), lifetime 40 (max_tokens included); pool of
  // 100 blocks, all free.
  for (auto mode : {sched::AdmissionMode::kReserve, sched::AdmissionMode::kOptimistic}) {
    sched::Scheduler sch(Config(8, 100000, mode));
    auto a = MakeSeq(1, 400, 10), b = MakeSeq(2, 400, 10), c = MakeSeq(3, 400, 10);
    for (auto* s : {&a, &b, &c}) {
      s->lifetime_blocks = 40;
      sch.AddWaiting(s);
    }
    FakeBlocks blocks;
    blocks.free = blocks.total = 100;
    sched::StepPlan plan = sch.Schedule(blocks);
    if (mode == sched::AdmissionMode::kReserve) {
      ASSERT_EQ(plan.prefill.size(), 2u);  // 40 + 40 reserved; a third would need 120
      Prefilled(sch, {&a, &b});
      // Later steps: the running pair holds few blocks yet (free 90), but their reservations stand.
      blocks.free = 90;
      EXPECT_TRUE(sch.Schedule(blocks).prefill.empty());
      sch.Remove(&a);  // one finishes: its reservation is released
      EXPECT_EQ(sch.Schedule(blocks).prefill.size(), 1u);
    } else {
      EXPECT_EQ(plan.prefill.size(), 3u);  // 3 x 12 blocks fit the free 100 now
    }
  }
}

TEST(Scheduler, PrefillTokenBudgetAdmitsAtLeastOne) {
  sched::Scheduler sch(Config(8, /*max_prefill_tokens=*/100));
  auto a = MakeSeq(1, 500, 1), b = MakeSeq(2, 50, 1);
  sch.AddWaiting(&a);
  sch.AddWaiting(&b);
  FakeBlocks blocks(1);
  blocks.free = 100;
  EXPECT_EQ(sch.Schedule(blocks).prefill.size(), 1u);
  Prefilled(sch, {&a});
  EXPECT_EQ(sch.Schedule(blocks).prefill.size(), 1u);
}

TEST(Scheduler, IdenticalPromptsChargeThePrefillBudgetOnce) {
  // The runner computes identical prompts of one step once, so three copies of a 60-token prompt
  // cost 60 of the 100-token budget; a different 60-token prompt (other hash) does not fit beside.
  sched::Scheduler sch(Config(8, /*max_prefill_tokens=*/100));
  auto a = MakeSeq(1, 60, 1), b = MakeSeq(2, 60, 1), c = MakeSeq(3, 60, 1), d = MakeSeq(4, 60, 1);
  a.prompt_hash = b.prompt_hash = c.prompt_hash = 7;
  d.prompt_hash = 8;
  for (auto* s : {&a, &b, &c, &d}) sch.AddWaiting(s);
  FakeBlocks blocks(1);
  blocks.free = 100;
  EXPECT_EQ(sch.Schedule(blocks).prefill.size(), 3u);
  Prefilled(sch, {&a, &b, &c});
  EXPECT_EQ(sch.Schedule(blocks).prefill.size(), 1u);
}


// ---- block accounting ---------------------------------------------------------------------------

TEST(BlockAccounting, BoundsFromThePerLayerTokenBounds) {
  FakeBlocks blocks(3);
  // Layers keep 100, 40, 40 tokens at most; 20 outputs: ceil(120/16) + 2 * ceil(60/16) = 8 + 4 + 4.
  const sched::RequestBlocks b = blocks.accounting.Bounds({100, 40, 40}, 20);
  EXPECT_EQ(b.prompt, 7 + 3 + 3);
  EXPECT_EQ(b.lifetime, 8 + 4 + 4);
  // The lifetime is never below the prompt plus one decode block per layer.
  EXPECT_EQ(blocks.accounting.Bounds({16, 16, 16}, 0).lifetime, 3 + 3);
}

TEST(BlockAccounting, WhatASequenceHoldsNeedsAndClaims) {
  FakeBlocks blocks(2);
  sched::Sequence s = MakeSeq(1, 100, /*blocks=*/10);
  blocks.length = {{1, 32}};  // two full blocks in each layer
  EXPECT_EQ(blocks.accounting.Held(s), 4);
  EXPECT_EQ(blocks.accounting.ForNextToken(s), 2);
  blocks.length = {{1, 33}};
  EXPECT_EQ(blocks.accounting.Held(s), 6);
  EXPECT_EQ(blocks.accounting.ForNextToken(s), 0);
  // Decoding: the next token. Mid-prefill: the rest of its prompt's bound.
  s.state = sched::SeqState::kRunning;
  EXPECT_EQ(blocks.accounting.ForStep(s), 0);
  s.state = sched::SeqState::kPrefilling;
  EXPECT_EQ(blocks.accounting.ForStep(s), 10 - 6);
  blocks.length = {{1, 16 * 5}};  // holds the whole bound: claims nothing more
  EXPECT_EQ(blocks.accounting.ForStep(s), 0);
  // Admission: prompt + a decode block per layer + the replay of 20 outputs (2 blocks per layer).
  EXPECT_EQ(blocks.accounting.ToAdmit(s), 10 + 2);
  s.output_ids.assign(20, 7);
  EXPECT_EQ(blocks.accounting.ToAdmit(s), 10 + 2 * (1 + 2));
  s.lifetime_blocks = 30;
  EXPECT_EQ(blocks.accounting.Reserved(s), 30);
  s.lifetime_blocks = 5;
  EXPECT_EQ(blocks.accounting.Reserved(s), 16);
}

// ---- the prefill in flight -----------------------------------------------------------------------

TEST(Scheduler, NewPromptsWaitForTheNextPrefillBatch) {
  sched::Scheduler sch(Config(8, 100000));
  auto a = MakeSeq(1, 100, 4), b = MakeSeq(2, 100, 4);
  sch.AddWaiting(&a);
  FakeBlocks blocks;
  blocks.free = 1000;
  sched::StepPlan plan = sch.Schedule(blocks);
  ASSERT_EQ(plan.prefill.size(), 1u);
  EXPECT_EQ(a.state, sched::SeqState::kPrefilling);
  EXPECT_EQ(sch.num_prefilling(), 1u);
  sch.AddWaiting(&b);
  // a is mid-prefill: no decode for it, and b waits for the next batch.
  for (int step = 0; step < 3; ++step) {
    plan = sch.Schedule(blocks);
    EXPECT_TRUE(plan.prefill.empty());
    EXPECT_TRUE(plan.decode.empty());
  }
  sch.MarkPrefilled(&a);
  EXPECT_EQ(a.state, sched::SeqState::kRunning);
  plan = sch.Schedule(blocks);
  ASSERT_EQ(plan.decode.size(), 1u);
  EXPECT_EQ(plan.decode[0], &a);
  ASSERT_EQ(plan.prefill.size(), 1u);
  EXPECT_EQ(plan.prefill[0], &b);
  EXPECT_EQ(sch.num_running(), 2u);
}

TEST(Scheduler, StepBudgetComesWithEveryPlan) {
  sched::SchedulerConfig c = Config(8, 100000);
  c.step_prefill_budget = 1234.5;
  sched::Scheduler sch(c);
  FakeBlocks blocks;
  EXPECT_EQ(sch.Schedule(blocks).prefill_budget, 1234.5);
}

TEST(Scheduler, PrefillInFlightKeepsTheRestOfItsPromptClaimed) {
  // Optimistic: d decodes (2 blocks at its next token over 2 layers), p is mid-prefill with a
  // prompt bound of 10 blocks of which it holds 4 (32 tokens in each of 2 layers).
  sched::Scheduler sch(Config(8, 100000, sched::AdmissionMode::kOptimistic));
  auto d = MakeSeq(1, 10, 2), p = MakeSeq(2, 100, 10), w = MakeSeq(3, 10, 1);
  FakeBlocks blocks;
  blocks.free = 100;
  sch.AddWaiting(&d);
  ASSERT_EQ(sch.Schedule(blocks).prefill.size(), 1u);
  sch.MarkPrefilled(&d);
  sch.AddWaiting(&p);
  ASSERT_EQ(sch.Schedule(blocks).prefill.size(), 1u);
  blocks.length = {{1, 16}, {2, 32}};  // d at a block boundary: 2 new blocks; p holds 4 of 10
  // 2 + 6 claimed of 8 free: both go on.
  blocks.free = 8;
  sched::StepPlan plan = sch.Schedule(blocks);
  EXPECT_TRUE(plan.preempted.empty());
  ASSERT_EQ(plan.decode.size(), 1u);
  // 7 free: the claims do not fit; the latest arrival, p, is preempted in mid-prefill.
  blocks.free = 7;
  plan = sch.Schedule(blocks);
  ASSERT_EQ(plan.preempted.size(), 1u);
  EXPECT_EQ(plan.preempted[0], &p);
  EXPECT_EQ(p.state, sched::SeqState::kWaiting);
  EXPECT_EQ(p.num_preemptions, 1);
  EXPECT_EQ(plan.decode.size(), 1u);
  EXPECT_TRUE(plan.prefill.empty());  // p was just put back: it waits a step
  // With p gone nothing is in flight: the next step admits again, oldest first (p before w).
  sch.AddWaiting(&w);
  blocks.length = {{1, 17}};
  blocks.free = 100;
  plan = sch.Schedule(blocks);
  ASSERT_EQ(plan.prefill.size(), 2u);
  EXPECT_EQ(plan.prefill[0], &p);
  EXPECT_EQ(plan.prefill[1], &w);
}

TEST(Scheduler, EveryPrefillingSequenceClaimsTheRestOfItsPrompt) {
  // A batch of two is admitted; each keeps the rest of its prompt's bound claimed while it
  // prefills, and when the pool shrinks below the claims the later arrival goes.
  sched::Scheduler sch(Config(8, 100000, sched::AdmissionMode::kOptimistic));
  auto a = MakeSeq(1, 100, 20), b = MakeSeq(2, 100, 20);
  sch.AddWaiting(&a);
  sch.AddWaiting(&b);
  FakeBlocks blocks;
  blocks.free = 48;  // (20 + 2) * 2 = 44
  ASSERT_EQ(sch.Schedule(blocks).prefill.size(), 2u);
  // Mid-prefill both hold nothing yet and claim 20 each: 40 of 40 free, nothing preempted.
  blocks.length = {{1, 0}, {2, 0}};
  blocks.free = 40;
  EXPECT_TRUE(sch.Schedule(blocks).preempted.empty());
  blocks.free = 39;
  sched::StepPlan plan = sch.Schedule(blocks);
  ASSERT_EQ(plan.preempted.size(), 1u);
  EXPECT_EQ(plan.preempted[0], &b);
}

}  // namespace
}  // namespace asl
