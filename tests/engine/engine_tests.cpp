// The engine end to end on the default model: continuous batching gives every request exactly what
// it gets alone (also under preemption), cancellation frees every block, seeded sampling is
// reproducible in a batch, and bad requests are refused with the field named. A long prompt's
// layer-sliced prefill lets running streams decode between its slices, and a prefill that ends
// half-way (cancel, shutdown, preemption) frees everything.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>
#include <algorithm>
#include <nlohmann/json.hpp>
#include <regex>

#include "engine/common/log_sink.h"
#include "engine/engine.h"

namespace asl {
namespace {

class Collect : public RequestSink {
 public:
  void OnTokens(const TokenChunk& c) override {
    std::lock_guard<std::mutex> lock(mu_);
    ids.insert(ids.end(), c.token_ids.begin(), c.token_ids.end());
    text += c.text;
    cv_.notify_all();
  }
  void OnFinish(const FinishEvent& ev) override {
    std::lock_guard<std::mutex> lock(mu_);
    finish = ev;
    done = true;
    cv_.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done; });
  }
  void WaitTokens(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done || ids.size() >= n; });
  }
  std::vector<TokenId> ids;
  std::string text;
  FinishEvent finish;
  bool done = false;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

EngineConfig Config(int64_t kv_bytes) {
  EngineConfig c;
  c.model_path = ASL_TEST_MODEL;
  c.kv_cache_bytes = kv_bytes;
  c.max_num_seqs = 16;
  return c;
}

std::vector<TokenId> Prompt(int64_t n, uint64_t seed) {
  at::manual_seed(static_cast<int64_t>(seed));
  at::Tensor t = at::randint(100, 20000, {n}, at::kInt);
  return std::vector<TokenId>(t.data_ptr<int32_t>(), t.data_ptr<int32_t>() + n);
}

GenerateRequest Request(std::vector<TokenId> ids, PolicyKind policy, int max_tokens) {
  GenerateRequest r;
  r.prompt_ids = std::move(ids);
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  r.pruning.policy = policy;
  r.pruning.select_k = 128;
  r.pruning.kv_budget = 96;
  r.pruning.tau = 0.9;
  return r;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(ASL_TEST_MODEL)) GTEST_SKIP() << "default model missing";
    if (const char* level = std::getenv("ASL_LOG_LEVEL")) SetLogLevel(level);
  }
  static std::vector<TokenId> RunAlone(const GenerateRequest& r) {
    auto engine = Engine::Create(Config(256 << 20));
    EXPECT_TRUE(engine.ok()) << engine.status().ToString();
    auto sink = std::make_shared<Collect>();
    EXPECT_TRUE((*engine)->Submit(r, sink).ok());
    sink->Wait();
    return sink->ids;
  }
  // 16 requests of mixed lengths and policies, submitted at staggered times.
  static std::vector<GenerateRequest> Mixed() {
    const PolicyKind kinds[] = {PolicyKind::kFull, PolicyKind::kAsl, PolicyKind::kSnapKv, PolicyKind::kFastKv,
                                PolicyKind::kGemFilter, PolicyKind::kAsl2Pass};
    std::vector<GenerateRequest> reqs;
    for (int i = 0; i < 16; ++i) reqs.push_back(Request(Prompt(40 + 61 * i, 100 + i), kinds[i % 6], 12 + (i % 5)));
    return reqs;
  }
  static void RunStaggered(Engine& engine, const std::vector<GenerateRequest>& reqs,
                           std::vector<std::shared_ptr<Collect>>& sinks) {
    for (size_t i = 0; i < reqs.size(); ++i) {
      sinks.push_back(std::make_shared<Collect>());
      ASSERT_TRUE(engine.Submit(reqs[i], sinks.back()).ok());
      if (i % 4 == 3) sinks[i - 2]->WaitTokens(2);  // let decoding start before more arrive
    }
    for (auto& s : sinks) s->Wait();
  }
};

TEST_F(EngineTest, BatchedRequestsMatchRunningAlone) {
  auto reqs = Mixed();
  auto engine = Engine::Create(Config(256 << 20));
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  std::vector<std::shared_ptr<Collect>> sinks;
  RunStaggered(**engine, reqs, sinks);
  if (HasFatalFailure()) return;
  for (size_t i = 0; i < reqs.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i) + " " + PolicyName(reqs[i].pruning.policy));
    EXPECT_EQ(sinks[i]->finish.reason, FinishReason::kLength);
    EXPECT_EQ(sinks[i]->ids, RunAlone(reqs[i]));
  }
  EXPECT_EQ((*engine)->Stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, PreemptionByRecomputeFinishesCorrectly) {
  auto reqs = Mixed();
  // 20 MiB = 1706 blocks of 12 KiB (float16 KV, the default): room for the largest request alone
  // (full KV of 772 + 16 tokens = 1500 blocks), not for all of them at once.
  // Optimistic admission (by prompt KV only) over-commits the pool; decode then runs out.
  EngineConfig config = Config(20 << 20);
  config.optimistic_admission = true;
  auto engine = Engine::Create(config);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  std::vector<std::shared_ptr<Collect>> sinks;
  RunStaggered(**engine, reqs, sinks);
  if (HasFatalFailure()) return;
  int preempted = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    preempted += sinks[i]->finish.num_preemptions;
    EXPECT_EQ(sinks[i]->ids, RunAlone(reqs[i]));
  }
  EXPECT_GT(preempted, 0) << "the pool was meant to force preemption";
  EXPECT_GT((*engine)->Stats().num_preemptions, 0);
  EXPECT_EQ((*engine)->Stats().kv_blocks_used, 0);
}

// Constrained and free requests batched together, through preemption: every constrained output
// matches its constraint, ends (kStop, despite ignore_eos) when the grammar is complete, and is
// exactly what the request gets alone (the grammar's state survives preemption like the RNG).
TEST_F(EngineTest, StructuredOutputHoldsInABatchAndThroughPreemption) {
  const std::vector<OutputConstraint> constraints = {
      {ConstraintKind::kRegex, "[0-9]{24,30}(-[0-9]{2,4})?"},
      {ConstraintKind::kJsonSchema, R"({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 999},
                                      "b": {"type": "array", "items": {"type": "boolean"}, "minItems": 8, "maxItems": 10}},
                                      "required": ["a", "b"]})"},
      {ConstraintKind::kGrammar, R"g(root ::= "(" [a-z]{24,32} ")" | "[" [A-Z]{24,32} "]")g"},
  };
  auto reqs = Mixed();
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (i % 2 == 0) {
      reqs[i].sampling.constraint = constraints[(i / 2) % constraints.size()];
      reqs[i].sampling.max_tokens = 96;
      // Greedy: a packed prefill rounds differently from one alone (SeededSamplingIsReproducible...),
      // which can flip a draw but not an argmax. Sampled constrained outputs: tests/sample/grammar_tests.
    } else {
      reqs[i].sampling.max_tokens = 48;  // the free ones grow the KV until the pool runs out
    }
  }
  EngineConfig config = Config(20 << 20);  // as PreemptionByRecomputeFinishesCorrectly
  config.optimistic_admission = true;
  auto engine = Engine::Create(config);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  std::vector<std::shared_ptr<Collect>> sinks;
  RunStaggered(**engine, reqs, sinks);
  if (HasFatalFailure()) return;
  int preempted = 0;
  for (size_t i = 0; i < reqs.size(); i += 2) {
    SCOPED_TRACE("request " + std::to_string(i) + ": " + sinks[i]->text);
    const Collect& c = *sinks[i];
    preempted += c.finish.num_preemptions;
    EXPECT_EQ(c.finish.reason, FinishReason::kStop);
    switch ((i / 2) % constraints.size()) {
      case 0: EXPECT_TRUE(std::regex_match(c.text, std::regex("[0-9]{24,30}(-[0-9]{2,4})?"))); break;
      case 1: {
        const nlohmann::json j = nlohmann::json::parse(c.text, nullptr, /*allow_exceptions=*/false);
        ASSERT_TRUE(j.is_object());
        EXPECT_TRUE(j["a"].is_number_integer());
        ASSERT_TRUE(j["b"].is_array());
        EXPECT_GE(j["b"].size(), 8u);
        EXPECT_LE(j["b"].size(), 10u);
        for (const auto& v : j["b"]) EXPECT_TRUE(v.is_boolean());
        break;
      }
      default: EXPECT_TRUE(std::regex_match(c.text, std::regex(R"(\([a-z]{24,32}\)|\[[A-Z]{24,32}\])"))); break;
    }
    // Alone: each kind once, and every preempted one (a run alone is a fresh engine: seconds each).
    if (i < 2 * constraints.size() || c.finish.num_preemptions > 0) EXPECT_EQ(c.ids, RunAlone(reqs[i]));
  }
  EXPECT_GT(preempted, 0) << "the pool was meant to preempt a constrained request";
  EXPECT_EQ((*engine)->Stats().kv_blocks_used, 0);
}

// ---- layer-sliced prefill: streams keep flowing, and every way a half-done prefill can end ----

// Logs which stream each token went to, in the order the engine thread delivered them.
struct EventLog {
  std::mutex mu;
  std::vector<int> events;  // stream tag per token chunk; -1 marks a point of the test
  void Add(int tag) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(tag);
  }
  // Tokens of `tag` after the marker and before the first token of `until`.
  int Between(int tag, int until) {
    std::lock_guard<std::mutex> lock(mu);
    auto mark = std::find(events.begin(), events.end(), -1);
    auto end = std::find(mark, events.end(), until);
    return static_cast<int>(std::count(mark, end, tag));
  }
};

class Logged : public Collect {
 public:
  Logged(int tag, EventLog* log) : tag_(tag), log_(log) {}
  void OnTokens(const TokenChunk& c) override {
    log_->Add(tag_);
    Collect::OnTokens(c);
  }

 private:
  int tag_;
  EventLog* log_;
};

// One layer of the prefill in flight per step, whatever the prompt.
EngineConfig LayerPerStep(int64_t kv_bytes) {
  EngineConfig c = Config(kv_bytes);
  c.step_prefill_budget = 1e-9;
  return c;
}

template <typename Pred>
bool Eventually(Pred pred) {
  for (int i = 0; i < 60000 && !pred(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return pred();
}

TEST_F(EngineTest, DecodeKeepsFlowingWhileALongPromptPrefills) {
  const GenerateRequest longer = Request(Prompt(1200, 21), PolicyKind::kAsl, 3);
  const std::vector<TokenId> alone = RunAlone(longer);
  // Sliced (one layer per step) and in one step, the setting the slicing replaces.
  for (double budget : {1e-9, 0.0}) {
    SCOPED_TRACE(budget > 0 ? "one chunk per step" : "one-step prefill");
    EngineConfig c = Config(256 << 20);
    c.step_prefill_budget = budget;
    auto engine = Engine::Create(c);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    EventLog log;
    auto stream = std::make_shared<Logged>(0, &log);
    auto stream_id = (*engine)->Submit(Request(Prompt(20, 22), PolicyKind::kFull, 400), stream);
    ASSERT_TRUE(stream_id.ok());
    stream->WaitTokens(2);
    log.Add(-1);
    auto big = std::make_shared<Logged>(1, &log);
    ASSERT_TRUE((*engine)->Submit(longer, big).ok());
    big->Wait();
    (*engine)->Cancel(*stream_id);
    stream->Wait();
    EXPECT_EQ(big->ids, alone);
    const int slices = big->finish.pruning.num_prefill_slices;
    const int stream_tokens = log.Between(0, 1);
    if (budget > 0) {
      // One chunk of at most 512 rows per step: 3 per layer while the 1200 tokens last, then one.
      EXPECT_GE(slices, 30);
      // Every step decoded the running stream before its slice: a token per slice at least.
      EXPECT_GE(stream_tokens, slices);
    } else {
      EXPECT_EQ(slices, 1);
      EXPECT_GE(stream_tokens, 1);
    }
  }
}

TEST_F(EngineTest, CancelMidPrefillFreesEveryBlock) {
  auto engine = Engine::Create(LayerPerStep(256 << 20));
  ASSERT_TRUE(engine.ok());
  EventLog log;
  auto stream = std::make_shared<Logged>(0, &log);
  auto stream_id = (*engine)->Submit(Request(Prompt(20, 23), PolicyKind::kFull, 400), stream);
  ASSERT_TRUE(stream_id.ok());
  stream->WaitTokens(2);
  auto big = std::make_shared<Logged>(1, &log);
  auto big_id = (*engine)->Submit(Request(Prompt(1500, 24), PolicyKind::kSnapKv, 5), big);
  ASSERT_TRUE(big_id.ok());
  ASSERT_TRUE(Eventually([&] { return (*engine)->Stats().num_prefilling == 1; }));
  // A few more decode steps: a few slices of its 30 have run and written KV.
  const size_t seen = stream->ids.size();
  stream->WaitTokens(seen + 3);
  (*engine)->Cancel(*big_id);
  big->Wait();
  EXPECT_EQ(big->finish.reason, FinishReason::kCancelled);
  EXPECT_TRUE(big->ids.empty()) << "the cancel was meant to land mid-prefill";
  // The running stream carries on.
  const size_t after = stream->ids.size();
  stream->WaitTokens(after + 3);
  EXPECT_FALSE(stream->done);
  (*engine)->Cancel(*stream_id);
  stream->Wait();
  EXPECT_TRUE(Eventually([&] { return (*engine)->Stats().kv_blocks_used == 0; }));
  EXPECT_EQ((*engine)->Stats().num_running, 0);
  EXPECT_EQ((*engine)->Stats().num_prefilling, 0);
}

TEST_F(EngineTest, ShutdownMidPrefillAbortsAndFreesEveryBlock) {
  auto engine = Engine::Create(LayerPerStep(256 << 20));
  ASSERT_TRUE(engine.ok());
  auto big = std::make_shared<Collect>();
  ASSERT_TRUE((*engine)->Submit(Request(Prompt(1500, 25), PolicyKind::kGemFilter, 5), big).ok());
  ASSERT_TRUE(Eventually([&] { return (*engine)->Stats().num_prefilling == 1; }));
  (*engine)->Shutdown(false, std::chrono::milliseconds(0));
  big->Wait();
  EXPECT_EQ(big->finish.reason, FinishReason::kAbort);
  EXPECT_TRUE(big->ids.empty());
  EXPECT_EQ((*engine)->Stats().kv_blocks_used, 0);
  EXPECT_EQ((*engine)->Stats().num_running, 0);
}

// Optimistic admission: a decoding request grows while a later one is mid-prefill, so the later
// one is preempted in mid-prefill (its max_tokens is 1: it can only ever be preempted before its
// first token), recomputed once the pool allows, and still gets exactly what it gets alone. With
// reserve admission the pool is never over-committed and nothing is preempted.
TEST_F(EngineTest, PreemptionInMidPrefillRecomputesCorrectly) {
  // Block size 1: the decoding request claims 30 blocks (one per layer) every step. Blocks of
  // 768 bytes (K and V, 3 KV heads x 64 dims, float16: the default KV dtype). A holds 30 x 160 after its prefill;
  // B's prefill (asl_2pass: pass 1 stores nothing, pass 2 keeps select_k = 64 per layer) claims
  // 30 x 64. The pool fits both admissions exactly, then two of A's decode steps leave B's claim
  // no room.
  const int64_t blocks = 30 * 160 + 30 * 64 + 60;
  GenerateRequest a = Request(Prompt(160, 26), PolicyKind::kFull, 40);
  GenerateRequest b = Request(Prompt(300, 27), PolicyKind::kAsl2Pass, 1);
  b.pruning.select_k = 64;
  b.pruning.tau = 1e-30;  // never reached: pass 1 runs every layer, pass 2 all of them again
  for (bool optimistic : {true, false}) {
    SCOPED_TRACE(optimistic ? "optimistic" : "reserve");
    EngineConfig c = LayerPerStep(blocks * 768);
    c.block_size = 1;
    c.optimistic_admission = optimistic;
    auto run_alone = [&](const GenerateRequest& r) {
      auto engine = Engine::Create(c);
      EXPECT_TRUE(engine.ok());
      auto sink = std::make_shared<Collect>();
      EXPECT_TRUE((*engine)->Submit(r, sink).ok());
      sink->Wait();
      return sink->ids;
    };
    auto engine = Engine::Create(c);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    ASSERT_EQ((*engine)->model_info().kv_blocks_total, blocks);
    auto sa = std::make_shared<Collect>(), sb = std::make_shared<Collect>();
    ASSERT_TRUE((*engine)->Submit(a, sa).ok());
    ASSERT_TRUE((*engine)->Submit(b, sb).ok());
    sa->Wait();
    sb->Wait();
    EXPECT_EQ(sa->finish.reason, FinishReason::kLength);
    EXPECT_EQ(sb->finish.reason, FinishReason::kLength) << sb->finish.status.ToString();
    EXPECT_EQ(sa->ids, run_alone(a));
    EXPECT_EQ(sb->ids, run_alone(b));
    EXPECT_EQ(sa->finish.num_preemptions, 0);
    if (optimistic) {
      EXPECT_GE(sb->finish.num_preemptions, 1) << "B was meant to be preempted in mid-prefill";
    } else {
      EXPECT_EQ(sb->finish.num_preemptions, 0);
    }
    EXPECT_TRUE(Eventually([&] { return (*engine)->Stats().kv_blocks_used == 0; }));
  }
}

TEST_F(EngineTest, CancelMidStreamFreesEveryBlock) {
  auto engine = Engine::Create(Config(64 << 20));
  ASSERT_TRUE(engine.ok());
  std::vector<std::shared_ptr<Collect>> sinks;
  std::vector<RequestId> ids;
  for (int i = 0; i < 6; ++i) {
    sinks.push_back(std::make_shared<Collect>());
    auto id = (*engine)->Submit(Request(Prompt(300, i), i % 2 ? PolicyKind::kAsl : PolicyKind::kFull, 200), sinks.back());
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  sinks[0]->WaitTokens(3);
  for (RequestId id : ids) (*engine)->Cancel(id);
  for (auto& s : sinks) {
    s->Wait();
    EXPECT_EQ(s->finish.reason, FinishReason::kCancelled);
    EXPECT_LT(s->ids.size(), 200u);
  }
  // Stats are published after each step; wait for the idle engine's last publication.
  for (int i = 0; i < 100 && (*engine)->Stats().kv_blocks_used != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ((*engine)->Stats().kv_blocks_used, 0);
  EXPECT_EQ((*engine)->Stats().num_running, 0);
}

TEST_F(EngineTest, SeededSamplingIsReproducibleInABatch) {
  GenerateRequest r = Request(Prompt(80, 7), PolicyKind::kFull, 24);
  r.sampling.temperature = 0.9;
  r.sampling.top_p = 0.95;
  r.sampling.seed = 1234;
  auto alone = RunAlone(r);
  auto engine = Engine::Create(Config(256 << 20));
  ASSERT_TRUE(engine.ok());
  // r prefills alone, then decodes beside others that arrive, prefill (in slices between its decode
  // steps) and sample with seeds of their own. Decode is bit-identical whatever the batch, and each
  // request draws from its own generator, so r's tokens are those of its run alone. (r's prefill
  // is kept alone on purpose: a packed prefill's GEMM rounds a row's last bits differently with
  // other prompts beside it, and float16 KV storage can turn that into a different draw.)
  auto target = std::make_shared<Collect>();
  ASSERT_TRUE((*engine)->Submit(r, target).ok());
  target->WaitTokens(1);
  std::vector<std::shared_ptr<Collect>> sinks;
  for (int i = 0; i < 4; ++i) {
    GenerateRequest other = Request(Prompt(60 + i, 50 + i), PolicyKind::kFull, 30);
    other.sampling.temperature = 1.0;
    other.sampling.seed = 99 + i;
    sinks.push_back(std::make_shared<Collect>());
    ASSERT_TRUE((*engine)->Submit(other, sinks.back()).ok());
  }
  for (auto& s : sinks) s->Wait();
  target->Wait();
  EXPECT_EQ(target->ids, alone);
  for (auto& s : sinks) EXPECT_EQ(s->ids.size(), 30u);
}

TEST_F(EngineTest, StopStringEndsGenerationWithoutEmittingIt) {
  GenerateRequest r = Request(Prompt(50, 3), PolicyKind::kFull, 40);
  auto engine = Engine::Create(Config(64 << 20));
  ASSERT_TRUE(engine.ok());
  auto first = std::make_shared<Collect>();
  ASSERT_TRUE((*engine)->Submit(r, first).ok());
  first->Wait();
  ASSERT_GT(first->text.size(), 12u);
  const std::string stop = first->text.substr(first->text.size() / 2, 4);
  const std::string expected = first->text.substr(0, first->text.find(stop));
  r.sampling.stop = {stop};
  auto second = std::make_shared<Collect>();
  ASSERT_TRUE((*engine)->Submit(r, second).ok());
  second->Wait();
  EXPECT_EQ(second->finish.reason, FinishReason::kStop);
  EXPECT_EQ(second->finish.stop_string, stop);
  EXPECT_EQ(second->text, expected);
}

TEST_F(EngineTest, BadRequestsAreRefusedWithTheFieldNamed) {
  auto engine = Engine::Create(Config(16 << 20));
  ASSERT_TRUE(engine.ok());
  auto sink = std::make_shared<Collect>();
  auto expect = [&](GenerateRequest r, StatusCode code, const std::string& field) {
    auto id = (*engine)->Submit(std::move(r), sink);
    ASSERT_FALSE(id.ok()) << field;
    EXPECT_EQ(id.status().code(), code) << id.status().ToString();
    EXPECT_NE(id.status().message().find(field), std::string::npos) << id.status().ToString();
  };
  GenerateRequest ok = Request(Prompt(20, 1), PolicyKind::kFull, 8);
  GenerateRequest r = ok;
  r.prompt_ids.clear();
  expect(r, StatusCode::kInvalidArgument, "prompt");
  r = ok;
  r.prompt_ids[3] = 1 << 30;
  expect(r, StatusCode::kInvalidArgument, "prompt_ids[3]");
  r = ok;
  r.sampling.temperature = -1;
  expect(r, StatusCode::kInvalidArgument, "temperature");
  r = ok;
  r.sampling.top_p = 1.5;
  expect(r, StatusCode::kInvalidArgument, "top_p");
  r = ok;
  r.sampling.max_tokens = -1;
  expect(r, StatusCode::kInvalidArgument, "max_tokens");
  r = ok;  // 0 = the rest of the context, capped by the pool: 720 tokens fill 1350 of its 1365 blocks,
  r.prompt_ids = Prompt(720, 3);  // and one more token needs a block per layer (30)
  r.sampling.max_tokens = 0;
  expect(r, StatusCode::kOutOfRange, "leave no room for output");
  r = ok;
  r.prompt_logprobs = 1;
  r.pruning.policy = PolicyKind::kAsl;  // cuts prompt rows: no logprob for every position
  expect(r, StatusCode::kInvalidArgument, "prompt_logprobs");
  r.pruning.policy = PolicyKind::kFull;
  r.prompt_logprobs = 21;
  expect(r, StatusCode::kInvalidArgument, "prompt_logprobs");
  r = ok;
  r.pruning.tau = 0;
  expect(r, StatusCode::kInvalidArgument, "tau");
  r = ok;
  r.pruning.kv_budget = 8;
  expect(r, StatusCode::kInvalidArgument, "kv_budget");
  r = ok;
  r.sampling.max_tokens = 1 << 30;
  expect(r, StatusCode::kOutOfRange, "sampling.max_tokens");
  r = ok;
  r.sampling.constraint = {ConstraintKind::kJsonSchema, R"({"type": "integer", "minimum": 3, "maximum": 1})"};
  expect(r, StatusCode::kInvalidArgument, "sampling.constraint: invalid json_schema");
  r.sampling.constraint = {ConstraintKind::kRegex, "[a-"};
  expect(r, StatusCode::kInvalidArgument, "sampling.constraint: invalid regex");
  r = ok;
  r.prompt_ids = Prompt(7000, 2);  // full KV for 7000 tokens cannot fit a 16 MiB pool
  expect(r, StatusCode::kOutOfRange, "prompt");
  // The same prompt pruned to a small budget fits: pruning is what buys the capacity.
  r.pruning.policy = PolicyKind::kSnapKv;
  r.sampling.max_tokens = 4;
  auto small = std::make_shared<Collect>();
  ASSERT_TRUE((*engine)->Submit(r, small).ok());
  small->Wait();
  EXPECT_EQ(small->ids.size(), 4u);
  (*engine)->Shutdown(true, std::chrono::milliseconds(1000));
  expect(ok, StatusCode::kUnavailable, "shutting down");
}

TEST_F(EngineTest, FullQueueIsRejectedAtOnce) {
  EngineConfig c = Config(64 << 20);
  c.max_waiting = 2;
  c.max_num_seqs = 1;
  auto engine = Engine::Create(c);
  ASSERT_TRUE(engine.ok());
  std::vector<std::shared_ptr<Collect>> sinks;
  int rejected = 0;
  for (int i = 0; i < 8; ++i) {
    sinks.push_back(std::make_shared<Collect>());
    auto id = (*engine)->Submit(Request(Prompt(200, i), PolicyKind::kFull, 50), sinks.back());
    if (!id.ok()) {
      EXPECT_EQ(id.status().code(), StatusCode::kResourceExhausted);
      EXPECT_NE(id.status().message().find("queue full"), std::string::npos);
      rejected++;
      sinks.pop_back();
    }
  }
  EXPECT_GT(rejected, 0);
  (*engine)->Shutdown(false, std::chrono::milliseconds(0));
  for (auto& s : sinks) {
    s->Wait();
    EXPECT_TRUE(s->finish.reason == FinishReason::kAbort || s->finish.reason == FinishReason::kLength);
  }
}

// Issue 18 D3: a cancelled request gives its scheduler.max_waiting slot back in Cancel itself, not
// when the engine thread next drains its inbox (after the step in progress, which may be a long
// prefill slice). Cancel then Submit from this thread leaves the engine thread no time to run.
TEST_F(EngineTest, CancelledRequestGivesItsQueueSlotBackAtOnce) {
  EngineConfig c = Config(64 << 20);
  c.max_waiting = 1;
  c.max_num_seqs = 1;
  auto engine = Engine::Create(c);
  ASSERT_TRUE(engine.ok());
  auto running = std::make_shared<Collect>();
  ASSERT_TRUE((*engine)->Submit(Request(Prompt(64, 1), PolicyKind::kFull, 400), running).ok());
  running->WaitTokens(1);  // scheduled: its slot is back
  auto waiting = std::make_shared<Collect>();
  auto id = (*engine)->Submit(Request(Prompt(64, 2), PolicyKind::kFull, 4), waiting);
  ASSERT_TRUE(id.ok());
  auto refused = (*engine)->Submit(Request(Prompt(64, 3), PolicyKind::kFull, 4), std::make_shared<Collect>());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  for (int i = 0; i < 16; ++i) {  // a burst of submit + cancel never fills the queue
    (*engine)->Cancel(*id);
    auto next = std::make_shared<Collect>();
    auto again = (*engine)->Submit(Request(Prompt(64, 4 + i), PolicyKind::kFull, 4), next);
    ASSERT_TRUE(again.ok()) << "after " << i << " cancels: " << again.status().ToString();
    id = again;
    waiting = next;
  }
  (*engine)->Cancel(*id);
  waiting->Wait();
  EXPECT_EQ(waiting->finish.reason, FinishReason::kCancelled);
  (*engine)->Shutdown(false, std::chrono::milliseconds(0));
  running->Wait();
  EXPECT_EQ((*engine)->Stats().kv_blocks_used, 0);
}

}  // namespace
}  // namespace asl
