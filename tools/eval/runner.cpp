#include "tools/eval/runner.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>

#include "tools/eval/scoring.h"

namespace asl::eval {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string Hms(double s) {
  const auto t = static_cast<int64_t>(s);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(t / 3600),
                static_cast<long long>(t / 60 % 60), static_cast<long long>(t % 60));
  return buf;
}

// A finished request, handed from the engine thread to the run loop.
struct Done {
  size_t job = 0;
  std::string text;
  FinishEvent event;
};

class DoneQueue {
 public:
  void Push(Done d) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      q_.push_back(std::move(d));
    }
    cv_.notify_one();
  }
  std::optional<Done> Pop(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return !q_.empty(); })) return std::nullopt;
    Done d = std::move(q_.front());
    q_.pop_front();
    return d;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Done> q_;
};

// Collects one request's text on the engine thread; never blocks for long (one short lock).
class EvalSink : public RequestSink {
 public:
  EvalSink(DoneQueue* q, size_t job) : q_(q), job_(job) {}
  void OnTokens(const TokenChunk& c) override { text_ += c.text; }
  void OnFinish(const FinishEvent& ev) override { q_->Push(Done{job_, std::move(text_), ev}); }

 private:
  DoneQueue* q_;
  size_t job_;
  std::string text_;
};

struct Job {
  size_t cell = 0;
  size_t sample = 0;  // index into Cell::samples
  PolicyKind policy = PolicyKind::kFull;
  int budget = 0;     // 0 for full
};

// One (length, task): its samples and how many of their requests have finished.
struct Cell {
  int length = 0;
  std::string task;
  std::vector<Sample> samples;
  int64_t planned = 0;
  int64_t finished = 0;
  Clock::time_point started;
};

class Runner {
 public:
  Runner(Engine& engine, SampleBuilder& builder, const RunPlan& plan)
      : engine_(engine), builder_(builder), plan_(plan) {
    for (PolicyKind p : plan.policies) jobs_per_sample_ += p == PolicyKind::kFull ? 1 : static_cast<int64_t>(plan.budgets.size());
    // Prior results that belong to this plan are carried over; their jobs are never submitted.
    std::map<std::pair<std::string, int>, int64_t> resumed_per_cell;
    for (const RunResult& r : plan.prior) {
      if (!r.error.empty() || !InPlan(r) || !resumed_.insert(Key(r)).second) continue;
      out_.results.push_back(r);
      resumed_per_cell[{r.task, r.length}]++;
    }
    out_.requests_resumed = out_.requests_done = static_cast<int64_t>(out_.results.size());
    out_.requests_planned = out_.requests_done;
    for (int length : plan.lengths) {
      for (const auto& t : plan.tasks) {
        Cell c;
        c.length = length;
        c.task = t;
        c.planned = NumSamples(t) * jobs_per_sample_ - resumed_per_cell[{t, length}];
        out_.requests_planned += c.planned;
        work_planned_ += static_cast<double>(c.planned) * length;
        cells_.push_back(std::move(c));
      }
    }
  }

  RunOutput Run() {
    t0_ = Clock::now();
    while (true) {
      if (!stopping_ && plan_.limit_seconds > 0 && Since(t0_) > plan_.limit_seconds) {
        stopping_ = true;
        std::fprintf(stderr, "[eval] limit of %.1f s reached: cancelling %zu requests in flight\n", plan_.limit_seconds,
                     in_flight_.size());
        for (const auto& [job, id] : in_flight_) engine_.Cancel(id);
      }
      // A sample's requests (one prompt under every policy and budget) go in together, so the
      // engine prefills them in one step and computes their shared rows once.
      while (!stopping_) {
        if (next_job_ == jobs_.size() && !PlanNextCell()) break;
        size_t end = next_job_ + 1;
        while (end < jobs_.size() && jobs_[end].cell == jobs_[next_job_].cell &&
               jobs_[end].sample == jobs_[next_job_].sample) {
          ++end;
        }
        if (!in_flight_.empty() && in_flight_.size() + (end - next_job_) > static_cast<size_t>(plan_.batch)) break;
        while (next_job_ < end) Submit(next_job_++);
      }
      if (in_flight_.empty()) break;
      auto d = done_.Pop(std::chrono::milliseconds(200));
      if (!d) continue;
      in_flight_.erase(d->job);
      if (d->event.reason == FinishReason::kCancelled || d->event.reason == FinishReason::kAbort) continue;
      Finish(d->job, d->text, d->event, "");
    }
    out_.partial = stopping_;
    out_.wall_seconds = Since(t0_);
    return std::move(out_);
  }

 private:
  static std::string Key(const RunResult& r) {
    return ResultKey(r.task, r.length, r.index, r.depth_percent, r.policy, r.budget);
  }

  // Whether an earlier result is one of this plan's requests.
  bool InPlan(const RunResult& r) const {
    const auto has = [](const auto& v, const auto& x) { return std::find(v.begin(), v.end(), x) != v.end(); };
    const auto policy = ParsePolicy(r.policy);
    if (!policy || !has(plan_.policies, *policy) || !has(plan_.lengths, r.length) || !has(plan_.tasks, r.task)) {
      return false;
    }
    if (*policy == PolicyKind::kFull ? r.budget != 0 : !has(plan_.budgets, r.budget)) return false;
    if (r.task == kNiahGrid) return r.index < plan_.niah_samples && has(plan_.niah_depths, r.depth_percent);
    return r.index < plan_.samples;
  }

  int64_t NumSamples(const std::string& task) const {
    return task == kNiahGrid ? static_cast<int64_t>(plan_.niah_depths.size()) * plan_.niah_samples : plan_.samples;
  }

  // Builds the next cell's samples and queues its jobs; false when no cell is left.
  bool PlanNextCell() {
    while (next_cell_ < cells_.size()) {
      const size_t ci = next_cell_++;
      Cell& c = cells_[ci];
      if (c.planned == 0) continue;  // every request of the cell was carried over
      c.started = Clock::now();
      const int64_t n = NumSamples(c.task);
      const size_t nd = plan_.niah_depths.size();
      Status error;
      for (int64_t i = 0; i < n && error.ok(); ++i) {
        auto s = c.task == kNiahGrid ? builder_.Build(c.task, c.length, static_cast<int>(i / nd), plan_.niah_depths[i % nd])
                                     : builder_.Build(c.task, c.length, static_cast<int>(i));
        if (!s.ok()) error = s.status();
        else c.samples.push_back(std::move(s).value());
      }
      if (!error.ok()) {
        out_.notes.push_back("skipped " + c.task + " at " + std::to_string(c.length) + ": " + error.message());
        std::fprintf(stderr, "[eval] skipping %s at %d: %s\n", c.task.c_str(), c.length, error.message().c_str());
        out_.requests_planned -= c.planned;
        work_planned_ -= static_cast<double>(c.planned) * c.length;
        c.planned = 0;
        c.samples.clear();
        continue;
      }
      for (size_t si = 0; si < c.samples.size(); ++si) {
        const Sample& s = c.samples[si];
        const auto add = [&](PolicyKind p, int b) {
          if (!resumed_.count(ResultKey(s.task, s.length, s.index, s.depth_percent, PolicyName(p), b))) {
            jobs_.push_back({ci, si, p, b});
          }
        };
        for (PolicyKind p : plan_.policies) {
          if (p == PolicyKind::kFull) {
            add(p, 0);
            continue;
          }
          for (int b : plan_.budgets) add(p, b);
        }
      }
      return true;
    }
    return false;
  }

  void Submit(size_t ji) {
    const Job& j = jobs_[ji];
    const Sample& s = cells_[j.cell].samples[j.sample];
    GenerateRequest req;
    req.client_id = "eval/" + s.task + "/" + std::to_string(s.length) + "/" + std::to_string(s.index);
    req.prompt_ids = s.prompt_ids;
    req.sampling.temperature = 0.0;
    req.sampling.max_tokens = s.max_tokens;
    req.pruning = RequestPruning(plan_.base, j.policy, j.budget);
    auto id = engine_.Submit(std::move(req), std::make_shared<EvalSink>(&done_, ji));
    if (!id.ok()) Finish(ji, "", FinishEvent{}, id.status().ToString());
    else in_flight_[ji] = *id;
  }

  void Finish(size_t ji, const std::string& text, const FinishEvent& ev, const std::string& submit_error) {
    const Job j = jobs_[ji];
    Cell& c = cells_[j.cell];
    const Sample& s = c.samples[j.sample];
    RunResult r;
    r.task = s.task;
    r.length = s.length;
    r.index = s.index;
    r.depth_percent = s.depth_percent;
    r.haystack_size = s.size;
    r.policy = PolicyName(j.policy);
    r.budget = j.budget;
    r.answers = s.text.answers;
    r.output = text;
    r.prompt_tokens = static_cast<int64_t>(s.prompt_ids.size());
    if (!submit_error.empty()) {
      r.error = submit_error;
      r.finish_reason = "error";
    } else {
      r.finish_reason = FinishReasonName(ev.reason);
      if (!ev.status.ok()) r.error = ev.status.ToString();
      r.completion_tokens = ev.usage.completion_tokens;
      r.ttft_seconds = ev.timings.ttft_seconds;
      r.e2e_seconds = ev.timings.e2e_seconds;
      r.pruning = ev.pruning;
    }
    r.score = !r.error.empty()      ? 0.0
              : s.task == kNiahGrid ? NiahScore(text, s.text.answers[0])
                                    : StringMatchAll(text, s.text.answers);
    out_.results.push_back(std::move(r));
    ++out_.requests_done;
    work_done_ += c.length;
    if (++c.finished == c.planned) CellDone(c);
  }

  // One line per finished cell: its mean score per policy (and budget), progress and ETA.
  void CellDone(Cell& c) {
    ++cells_done_;
    std::map<std::string, std::pair<double, int>> by_run;
    for (const auto& x : out_.results) {
      if (x.task != c.task || x.length != c.length) continue;
      auto& [sum, n] = by_run[x.policy + (x.budget ? "@" + std::to_string(x.budget) : "")];
      sum += x.score, ++n;
    }
    std::string scores;
    for (const auto& [name, sn] : by_run) {
      scores += " " + name + "=" + std::to_string(static_cast<int>(100.0 * sn.first / sn.second + 0.5));
    }
    const double elapsed = Since(t0_);
    const int64_t done = out_.requests_done, planned = out_.requests_planned;
    // Requests weighted by their context length: longer cells cost more.
    const double eta = work_done_ > 0 ? elapsed / work_done_ * (work_planned_ - work_done_) : 0.0;
    std::fprintf(stderr, "[eval] cell %zu/%zu len=%d %s: %lld requests in %.1f s |%s | %lld/%lld, elapsed %s, ETA %s\n",
                 cells_done_, cells_.size(), c.length, c.task.c_str(), static_cast<long long>(c.planned),
                 Since(c.started), scores.c_str(), static_cast<long long>(done), static_cast<long long>(planned),
                 Hms(elapsed).c_str(), Hms(eta).c_str());
    c.samples.clear();  // a finished cell's jobs are never read again
    c.samples.shrink_to_fit();
  }

  Engine& engine_;
  SampleBuilder& builder_;
  const RunPlan& plan_;
  int64_t jobs_per_sample_ = 0;
  std::vector<Cell> cells_;
  std::vector<Job> jobs_;
  size_t next_cell_ = 0, next_job_ = 0, cells_done_ = 0;
  std::map<size_t, RequestId> in_flight_;  // job -> request
  std::set<std::string> resumed_;          // keys of the results carried over from the plan's prior
  DoneQueue done_;
  bool stopping_ = false;
  double work_planned_ = 0.0, work_done_ = 0.0;  // Σ requests x context length
  Clock::time_point t0_;
  RunOutput out_;
};

}  // namespace

PruningParams RequestPruning(const PruningParams& base, PolicyKind policy, int budget) {
  PruningParams p = base;
  p.policy = policy;
  if (policy == PolicyKind::kFull) {
    p.kv_budget = 0;  // full KV (select_k is unused)
  } else {
    p.kv_budget = budget;
    p.select_k = budget;
  }
  return p;
}

RunOutput RunBenchmark(Engine& engine, SampleBuilder& builder, const RunPlan& plan) {
  return Runner(engine, builder, plan).Run();
}

}  // namespace asl::eval
