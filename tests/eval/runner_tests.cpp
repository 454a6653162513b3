// The eval run loop against a fake engine: every sample under every policy and budget, full once,
// at most `batch` requests in flight (whole samples at a time), submit errors scored 0, and the time limit's partial run.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "tools/eval/runner.h"

namespace asl::eval {
namespace {

// Word <-> id table shared by the test encoder and the fake engine's "detokenizer".
struct Vocab {
  std::mutex mu;
  std::map<std::string, TokenId> ids;
  std::vector<std::string> words;
  std::vector<TokenId> Encode(const std::string& text) {
    std::lock_guard<std::mutex> lock(mu);
    std::istringstream in(text);
    std::vector<TokenId> out;
    for (std::string w; in >> w;) {
      auto [it, added] = ids.emplace(w, static_cast<TokenId>(words.size()));
      if (added) words.push_back(w);
      out.push_back(it->second);
    }
    return out;
  }
  std::string Decode(const std::vector<TokenId>& ids_in) {
    std::lock_guard<std::mutex> lock(mu);
    std::string s;
    for (TokenId t : ids_in) s += words[t] + " ";
    return s;
  }
};

// Answers a `full` request with its own prompt (so every reference is found) and any other policy
// with nothing; rejects kv_budget 512 at submit. One request at a time, `delay` each.
class FakeEngine : public Engine {
 public:
  FakeEngine(Vocab* vocab, std::chrono::milliseconds delay) : vocab_(vocab), delay_(delay) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~FakeEngine() override { Shutdown(false, std::chrono::milliseconds(0)); }

  StatusOr<RequestId> Submit(GenerateRequest req, std::shared_ptr<RequestSink> sink) override {
    if (req.pruning.kv_budget == 512) return InvalidArgument("pruning.kv_budget: rejected by the fake");
    std::lock_guard<std::mutex> lock(mu_);
    const RequestId id = next_id_++;
    submitted.push_back(req.pruning);
    queue_.push_back({id, std::move(req), std::move(sink)});
    max_in_flight = std::max<int>(max_in_flight, static_cast<int>(queue_.size()) + busy_);
    cv_.notify_all();
    return id;
  }
  void Cancel(RequestId id) override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.insert(id);
  }
  void ResetPrefixCache() override {}
  void Shutdown(bool, std::chrono::milliseconds) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
  }
  const tok::Tokenizer& tokenizer() const override { std::abort(); }
  const ModelInfo& model_info() const override { return info_; }
  const EngineConfig& config() const override { return config_; }
  EngineStats Stats() const override { return {}; }

  std::vector<PruningParams> submitted;
  int max_in_flight = 0;

 private:
  struct Item {
    RequestId id;
    GenerateRequest req;
    std::shared_ptr<RequestSink> sink;
  };
  void Loop() {
    while (true) {
      Item item;
      bool cancelled;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_ && queue_.empty()) return;
        item = std::move(queue_.front());
        queue_.pop_front();
        ++busy_;
      }
      std::this_thread::sleep_for(delay_);
      {
        std::lock_guard<std::mutex> lock(mu_);
        cancelled = cancelled_.count(item.id) > 0;
      }
      FinishEvent ev;
      if (cancelled) {
        ev.reason = FinishReason::kCancelled;
      } else {
        TokenChunk chunk;
        chunk.text = item.req.pruning.policy == PolicyKind::kFull ? vocab_->Decode(item.req.prompt_ids) : "no idea";
        item.sink->OnTokens(chunk);
        ev.reason = FinishReason::kLength;
        ev.usage.completion_tokens = item.req.sampling.max_tokens;
        ev.pruning.policy = item.req.pruning.policy;
        ev.pruning.outcome = SelectionOutcome::kSelected;
        ev.pruning.selection_layer = item.req.pruning.kv_budget / 32;
        ev.pruning.prefill_seconds = 0.25;
        ev.pruning.prefill_token_layers = 4321;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        --busy_;
      }
      item.sink->OnFinish(ev);
    }
  }

  Vocab* vocab_;
  std::chrono::milliseconds delay_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::set<RequestId> cancelled_;
  RequestId next_id_ = 1;
  int busy_ = 0;
  bool stop_ = false;
  std::thread thread_;
  ModelInfo info_;
  EngineConfig config_;
};

const EvalData& Data() {
  static const EvalData* d = [] {
    std::vector<std::string> essays{std::string()};
    for (int s = 0; s < 3000; ++s) essays[0] += "Filler sentence " + std::to_string(s) + " is here. ";
    std::vector<std::string> nouns, adjs, verbs;
    for (int i = 0; i < 500; ++i) nouns.push_back("noun" + std::to_string(i)), adjs.push_back("adj" + std::to_string(i)),
        verbs.push_back("verb" + std::to_string(i));
    return new EvalData(MakeEvalData(essays, nouns, adjs, verbs));
  }();
  return *d;
}

RunPlan SmallPlan() {
  RunPlan plan;
  plan.tasks = {"niah_single_1", "vt", kNiahGrid};
  plan.policies = {PolicyKind::kFull, PolicyKind::kAsl};
  plan.lengths = {1024};
  plan.budgets = {256, 512};
  plan.samples = 2;
  plan.niah_depths = NiahDepths(3);
  plan.niah_samples = 1;
  plan.batch = 4;
  return plan;
}

TEST(Runner, EverySampleUnderEveryPolicyAndBudgetFullOnce) {
  Vocab vocab;
  SampleBuilder builder(Data(), 42, [&](const std::string& u, const std::string& p) -> StatusOr<std::vector<TokenId>> {
    return vocab.Encode("<user> " + u + " <assistant> " + p);
  });
  // 20 ms a request: the loop refills the batch long before one finishes.
  FakeEngine engine(&vocab, std::chrono::milliseconds(20));
  RunPlan plan = SmallPlan();
  plan.batch = 7;  // two samples of 3 requests; a third sample is never split to fill the 7th slot
  RunOutput out = RunBenchmark(engine, builder, plan);
  engine.Shutdown(false, std::chrono::milliseconds(0));
  // (2 + 2 + 3 samples) x (full once + asl at 2 budgets).
  EXPECT_EQ(out.requests_planned, 21);
  EXPECT_EQ(out.requests_done, 21);
  ASSERT_EQ(out.results.size(), 21u);
  EXPECT_FALSE(out.partial);
  std::map<std::string, int> count;
  for (const auto& r : out.results) {
    const std::string run = r.policy + "@" + std::to_string(r.budget);
    count[run]++;
    if (r.policy == "full") {
      EXPECT_EQ(r.budget, 0);
      EXPECT_DOUBLE_EQ(r.score, 1.0) << r.task << " " << r.output.substr(0, 80);
      EXPECT_TRUE(r.error.empty());
    } else if (r.budget == 512) {
      EXPECT_NE(r.error.find("rejected by the fake"), std::string::npos);
      EXPECT_DOUBLE_EQ(r.score, 0.0);
    } else {
      EXPECT_DOUBLE_EQ(r.score, 0.0);
      EXPECT_EQ(r.pruning.selection_layer, 8);
      EXPECT_DOUBLE_EQ(r.pruning.prefill_seconds, 0.25);
    }
    EXPECT_LE(r.prompt_tokens + (r.task == "vt" ? 30 : r.task == kNiahGrid ? 32 : 128), 1024);
  }
  EXPECT_EQ(count["full@0"], 7);
  EXPECT_EQ(count["asl@256"], 7);
  EXPECT_EQ(count["asl@512"], 7);
  for (const auto& p : engine.submitted) {
    if (p.policy == PolicyKind::kFull) {
      EXPECT_EQ(p.kv_budget, 0);
    } else {
      EXPECT_EQ(p.kv_budget, 256);
      EXPECT_EQ(p.select_k, 256);
    }
  }
  EXPECT_EQ(engine.max_in_flight, 6);
}

TEST(Runner, TimeLimitCancelsAndReturnsPartial) {
  Vocab vocab;
  SampleBuilder builder(Data(), 42, [&](const std::string& u, const std::string& p) -> StatusOr<std::vector<TokenId>> {
    return vocab.Encode(u + " " + p);
  });
  FakeEngine engine(&vocab, std::chrono::milliseconds(60));
  RunPlan plan = SmallPlan();
  plan.budgets = {256};
  plan.batch = 2;
  plan.limit_seconds = 0.3;
  RunOutput out = RunBenchmark(engine, builder, plan);
  engine.Shutdown(false, std::chrono::milliseconds(0));
  EXPECT_TRUE(out.partial);
  EXPECT_GT(out.requests_done, 0);
  EXPECT_LT(out.requests_done, out.requests_planned);
  EXPECT_EQ(static_cast<int64_t>(out.results.size()), out.requests_done);
}

TEST(Runner, CellThatCannotFitIsSkippedWithANote) {
  Vocab vocab;
  SampleBuilder builder(Data(), 42, [&](const std::string& u, const std::string& p) -> StatusOr<std::vector<TokenId>> {
    return vocab.Encode(u + " " + p);
  });
  FakeEngine engine(&vocab, std::chrono::milliseconds(0));
  RunPlan plan = SmallPlan();
  plan.tasks = {"vt", "niah_single_1"};
  plan.lengths = {300};  // vt's solved example alone is longer
  RunOutput out = RunBenchmark(engine, builder, plan);
  ASSERT_EQ(out.notes.size(), 1u);
  EXPECT_NE(out.notes[0].find("skipped vt at 300"), std::string::npos);
  EXPECT_EQ(out.requests_planned, 2 * 3);
  EXPECT_EQ(out.requests_done, 2 * 3);
}

TEST(Runner, ResumeRunsOnlyWhatIsMissing) {
  Vocab vocab;
  auto encode = [&](const std::string& u, const std::string& p) -> StatusOr<std::vector<TokenId>> {
    return vocab.Encode("<user> " + u + " <assistant> " + p);
  };
  SampleBuilder builder(Data(), 42, encode);
  FakeEngine engine(&vocab, std::chrono::milliseconds(0));
  RunPlan plan = SmallPlan();
  RunOutput first = RunBenchmark(engine, builder, plan);
  engine.Shutdown(false, std::chrono::milliseconds(0));
  ASSERT_EQ(first.results.size(), 21u);

  // The earlier run's results, through their JSON form, less two `full` ones; plus one that is not in
  // this plan (budget 999). The 7 asl@512 results failed (the fake rejects them): they run again.
  RunPlan again = SmallPlan();
  int dropped_full = 0;
  for (const auto& r : first.results) {
    if (r.policy == "full" && dropped_full < 2) {
      dropped_full++;
      continue;
    }
    auto back = ResultFromJson(ResultJson(r));
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back->output, r.output);
    EXPECT_EQ(back->pruning.selection_layer, r.pruning.selection_layer);
    EXPECT_EQ(back->pruning.outcome, r.pruning.outcome);
    EXPECT_EQ(back->pruning.prefill_token_layers, r.pruning.prefill_token_layers);
    EXPECT_EQ(back->depth_percent, r.depth_percent);
    again.prior.push_back(std::move(back).value());
  }
  RunResult stray = again.prior.back();
  stray.budget = 999;
  again.prior.push_back(stray);

  SampleBuilder builder2(Data(), 42, encode);
  FakeEngine engine2(&vocab, std::chrono::milliseconds(0));
  RunOutput out = RunBenchmark(engine2, builder2, again);
  engine2.Shutdown(false, std::chrono::milliseconds(0));
  EXPECT_EQ(out.requests_resumed, 21 - 2 - 7);
  // Run again: the 2 dropped `full` requests, and the 7 failed asl@512 ones (which the fake rejects at
  // Submit again, before it records them).
  ASSERT_EQ(engine2.submitted.size(), 2u);
  for (const auto& p : engine2.submitted) EXPECT_EQ(p.policy, PolicyKind::kFull);
  int failed = 0;
  for (const auto& r : out.results) failed += !r.error.empty();
  EXPECT_EQ(failed, 7);
  EXPECT_EQ(out.requests_planned, 21);
  EXPECT_EQ(out.requests_done, 21);
  ASSERT_EQ(out.results.size(), 21u);
  std::set<std::string> keys;
  for (const auto& r : out.results) {
    keys.insert(ResultKey(r.task, r.length, r.index, r.depth_percent, r.policy, r.budget));
  }
  EXPECT_EQ(keys.size(), 21u);  // each request once, the stray one left out

  EXPECT_FALSE(ResultFromJson(nlohmann::json{{"task", "vt"}}).ok());
}

}  // namespace
}  // namespace asl::eval
