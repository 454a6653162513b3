#include "server/metrics.h"

#include "server/metrics_http.h"
#include "version/version.h"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <vector>

namespace asl::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildHistogram;
using prometheus::Counter;
using prometheus::Family;
using prometheus::Histogram;

// vLLM's layouts (vllm/v1/metrics/loggers.py), so that its dashboards read ours.
const Histogram::BucketBoundaries kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                                  0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0,
                                                  20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
const Histogram::BucketBoundaries kTpotBuckets = {0.01, 0.025, 0.05, 0.075, 0.1,  0.15, 0.2,  0.3,  0.4, 0.5,
                                                  0.75, 1.0,   2.5,  5.0,   7.5,  10.0, 20.0, 40.0, 80.0};
const Histogram::BucketBoundaries kRequestLatencyBuckets = {0.3,  0.5,  0.8,  1.0,   1.5,   2.0,   2.5,
                                                            5.0,  10.0, 15.0, 20.0,  30.0,  40.0,  50.0,
                                                            60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

// Engine steps a prefill took (one slice of whole layers per step).
const Histogram::BucketBoundaries kSliceBuckets = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512};

Histogram::BucketBoundaries RatioBuckets() {
  Histogram::BucketBoundaries b;
  // i / 20.0, not i * 0.05: the label is the shortest decimal of the bound ("0.95", not
  // "0.9500000000000001").
  for (int i = 1; i <= 20; ++i) b.push_back(i / 20.0);
  return b;
}

// The standard process metrics (the names every Prometheus client library exports), from /proc.
struct ProcessStats {
  double cpu_seconds = 0, start_time_seconds = 0, virtual_bytes = 0, resident_bytes = 0;
  double open_fds = 0, max_fds = 0;
};

ProcessStats ReadProcessStats() {
  ProcessStats p;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  if (std::ifstream stat("/proc/self/stat"); stat) {
    std::string line;
    std::getline(stat, line);
    // Fields after the command name (which may hold spaces) in ")": state is field 3.
    const size_t close = line.rfind(')');
    std::istringstream rest(close == std::string::npos ? "" : line.substr(close + 2));
    std::vector<std::string> f{"", ""};  // field n (man 5 proc) at index n - 1; state is field 3
    for (std::string v; rest >> v;) f.push_back(v);
    auto field = [&](size_t n) { return n >= 3 && n <= f.size() ? std::atof(f[n - 1].c_str()) : 0.0; };
    p.cpu_seconds = (field(14) + field(15)) / ticks;  // utime + stime
    p.virtual_bytes = field(23);
    p.resident_bytes = field(24) * page;
    double boot = 0;
    if (std::ifstream proc_stat("/proc/stat"); proc_stat) {
      for (std::string key; proc_stat >> key;) {
        if (key == "btime") {
          proc_stat >> boot;
          break;
        }
        proc_stat.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
      }
    }
    p.start_time_seconds = boot + field(22) / ticks;
  }
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec)) {
    p.open_fds += 1;
  }
  if (rlimit r{}; getrlimit(RLIMIT_NOFILE, &r) == 0) p.max_fds = static_cast<double>(r.rlim_cur);
  return p;
}

// One sample of a value read at scrape time: a gauge, or a counter whose total the engine keeps.
// `labels`: the model_name label of engine metrics; none on the standard process metrics.
prometheus::MetricFamily Sample(prometheus::MetricType type, const std::string& name, const std::string& help,
                                double value, const prometheus::Labels& labels) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  for (const auto& [k, v] : labels) m.label.push_back({k, v});
  (type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value) = value;
  f.metric.push_back(m);
  return f;
}

prometheus::MetricFamily Gauge(const std::string& name, const std::string& help, double value,
                               const prometheus::Labels& labels = {}) {
  return Sample(prometheus::MetricType::Gauge, name, help, value, labels);
}

prometheus::MetricFamily CounterOf(const std::string& name, const std::string& help, double value,
                                   const prometheus::Labels& labels = {}) {
  return Sample(prometheus::MetricType::Counter, name, help, value, labels);
}

}  // namespace

struct ServerMetrics::Families {
  // `c`: the constant labels of every family (model_name).
  Families(prometheus::Registry& r, const prometheus::Labels& c)
      : ttft(BuildHistogram().Name("asl_time_to_first_token_seconds")
                 .Help("Time from submission to the first generated token, per request").Labels(c).Register(r)),
        tpot(BuildHistogram().Name("asl_time_per_output_token_seconds")
                 .Help("Time between consecutive generated tokens").Labels(c).Register(r)),
        e2e(BuildHistogram().Name("asl_e2e_request_latency_seconds")
                .Help("Time from submission to the end of the request").Labels(c).Register(r)),
        queue(BuildHistogram().Name("asl_request_queue_time_seconds")
                  .Help("Time from submission to the first scheduling").Labels(c).Register(r)),
        prefill(BuildHistogram().Name("asl_request_prefill_time_seconds")
                    .Help("Prefill compute time of the request (all passes)").Labels(c).Register(r)),
        selection_layer(BuildHistogram().Name("asl_selection_layer")
                            .Help("Layer at which the prompt was cut (one bucket per layer), by policy").Labels(c).Register(r)),
        kv_kept_ratio(BuildHistogram().Name("asl_kv_kept_ratio")
                          .Help("KV tokens kept after prefill / KV tokens full attention keeps, per request")
                          .Labels(c).Register(r)),
        selection_outcome(BuildCounter().Name("asl_selection_outcome_total")
                              .Help("Selection outcomes of policies that select (selected, forced, none)")
                              .Labels(c).Register(r)),
        pruned_prompt_tokens(BuildCounter().Name("asl_pruned_prompt_tokens_total")
                                 .Help("Prompt tokens dropped at the selection layer").Labels(c).Register(r)),
        requests(BuildCounter().Name("asl_requests_total")
                     .Help("Requests by final status (finish reason, or the gRPC code of a rejection) and policy")
                     .Labels(c).Register(r)),
        prompt_tokens(BuildCounter().Name("asl_prompt_tokens_total")
                          .Help("Prompt tokens of finished requests").Labels(c).Register(r).Add({})),
        generation_tokens(BuildCounter().Name("asl_generation_tokens_total")
                              .Help("Tokens generated by finished requests").Labels(c).Register(r).Add({})),
        preemptions(BuildCounter().Name("asl_preemptions_total")
                        .Help("Sequences preempted (KV dropped, recomputed later)").Labels(c).Register(r).Add({})),
        prefill_slices(BuildHistogram().Name("asl_request_prefill_slices")
                           .Help("Engine steps a request's prefill took (slices of whole layers)").Labels(c).Register(r)),
        step_seconds(BuildHistogram().Name("asl_step_seconds")
                         .Help("Wall time of each engine step's stage: decode (one token for every running "
                               "sequence) and prefill (the slice of the prefill in flight)")
                         .Labels(c).Register(r)),
        step_decode(step_seconds.Add({{"stage", "decode"}}, kTpotBuckets)),
        step_prefill(step_seconds.Add({{"stage", "prefill"}}, kTpotBuckets)),
        prefill_token_layers(BuildCounter().Name("asl_prefill_token_layers_total")
                                 .Help("Rows computed by prefill layers (one token through one layer)")
                                 .Labels(c).Register(r).Add({})) {
    // Every series a dashboard expects exists from the start, at zero.
    for (const PolicyInfo& info : kPolicies) {
      const std::string p = info.name;
      ttft.Add({{"policy", p}}, kTtftBuckets);
      tpot.Add({{"policy", p}}, kTpotBuckets);
      e2e.Add({{"policy", p}}, kRequestLatencyBuckets);
      queue.Add({{"policy", p}}, kRequestLatencyBuckets);
      prefill.Add({{"policy", p}}, kRequestLatencyBuckets);
      kv_kept_ratio.Add({{"policy", p}}, RatioBuckets());
      prefill_slices.Add({{"policy", p}}, kSliceBuckets);
      pruned_prompt_tokens.Add({{"policy", p}});
      for (FinishReason r : {FinishReason::kStop, FinishReason::kLength, FinishReason::kCancelled,
                             FinishReason::kError, FinishReason::kAbort}) {
        requests.Add({{"status", FinishReasonName(r)}, {"policy", p}});
      }
      if (!info.selects) continue;
      for (SelectionOutcome o : {SelectionOutcome::kSelected, SelectionOutcome::kForced, SelectionOutcome::kNone}) {
        selection_outcome.Add({{"outcome", SelectionOutcomeName(o)}, {"policy", p}});
      }
    }
  }

  Family<Histogram>& ttft;
  Family<Histogram>& tpot;
  Family<Histogram>& e2e;
  Family<Histogram>& queue;
  Family<Histogram>& prefill;
  Family<Histogram>& selection_layer;
  Family<Histogram>& kv_kept_ratio;
  Family<Counter>& selection_outcome;
  Family<Counter>& pruned_prompt_tokens;
  Family<Counter>& requests;
  Counter& prompt_tokens;
  Counter& generation_tokens;
  Counter& preemptions;
  Family<Histogram>& prefill_slices;
  Family<Histogram>& step_seconds;
  Histogram& step_decode;
  Histogram& step_prefill;
  Counter& prefill_token_layers;

  std::mutex mu;                              // guards layer_buckets
  Histogram::BucketBoundaries layer_buckets;  // 0, 1, ..., L-1; empty before SetModel
};

// The gauges, computed at scrape time.
class ServerMetrics::GaugeCollector final : public prometheus::Collectable {
 public:
  explicit GaugeCollector(prometheus::Labels labels) : labels_(std::move(labels)) {}

  prometheus::Labels BuildLabels() const {
    prometheus::Labels l = labels_;
    l["version"] = Version();
    l["revision"] = GitCommit();
    return l;
  }

  void Set(std::function<EngineStats()> stats) {
    std::lock_guard<std::mutex> lock(mu_);
    stats_ = std::move(stats);
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    EngineStats s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stats_) s = stats_();
    }
    const double usage = s.kv_blocks_total > 0 ? static_cast<double>(s.kv_blocks_used) / s.kv_blocks_total : 0.0;
    const prometheus::Labels& m = labels_;
    const ProcessStats p = ReadProcessStats();
    return {
        Gauge("asl_kv_blocks_capacity", "KV blocks in the pool", static_cast<double>(s.kv_blocks_total), m),
        Gauge("asl_kv_blocks_used", "KV blocks held by sequences", static_cast<double>(s.kv_blocks_used), m),
        Gauge("asl_kv_cache_usage_ratio", "KV blocks used / capacity", usage, m),
        Gauge("asl_kv_cache_bytes_used", "Bytes of the KV blocks in use", static_cast<double>(s.kv_bytes_used), m),
        Gauge("asl_device_memory_allocated_bytes", "Device memory allocated by the engine (CUDA; 0 on CPU)",
              static_cast<double>(s.device_memory_allocated), m),
        Gauge("asl_requests_running", "Sequences running (prefilling or decoding)", static_cast<double>(s.num_running),
              m),
        Gauge("asl_requests_prefilling", "Running sequences whose prefill is in flight",
              static_cast<double>(s.num_prefilling), m),
        Gauge("asl_requests_waiting", "Requests waiting for admission", static_cast<double>(s.num_waiting), m),
        Gauge("asl_kv_blocks_cached", "KV blocks holding prefix-cache K/V (in use or evictable)",
              static_cast<double>(s.kv_blocks_cached), m),
        CounterOf("asl_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache at admission",
                  static_cast<double>(s.prefix_cache_query_tokens), m),
        CounterOf("asl_prefix_cache_hits_total", "Prompt tokens found in the prefix cache (not prefilled)",
                  static_cast<double>(s.prefix_cache_hit_tokens), m),
        CounterOf("asl_prefix_cache_evictions_total", "Cached KV blocks evicted to make room",
                  static_cast<double>(s.prefix_cache_evictions), m),
        Gauge("asl_build_info", "Always 1: the build's version and git commit, and the model served", 1.0,
              BuildLabels()),
        // The standard process metrics (no model label: they describe the process).
        CounterOf("process_cpu_seconds_total", "Total user and system CPU time spent in seconds", p.cpu_seconds),
        Gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds",
              p.start_time_seconds),
        Gauge("process_virtual_memory_bytes", "Virtual memory size in bytes", p.virtual_bytes),
        Gauge("process_resident_memory_bytes", "Resident memory size in bytes", p.resident_bytes),
        Gauge("process_open_fds", "Number of open file descriptors", p.open_fds),
        Gauge("process_max_fds", "Maximum number of open file descriptors", p.max_fds),
    };
  }

 private:
  const prometheus::Labels labels_;
  mutable std::mutex mu_;
  std::function<EngineStats()> stats_;
};

ServerMetrics::ServerMetrics(const std::string& model_name)
    : registry_(std::make_shared<prometheus::Registry>()),
      f_(std::make_unique<Families>(*registry_, prometheus::Labels{{"model_name", model_name}})),
      gauges_(std::make_shared<GaugeCollector>(prometheus::Labels{{"model_name", model_name}})) {}

ServerMetrics::~ServerMetrics() { StopHttp(); }

Status ServerMetrics::StartHttp(const std::string& host, int port) {
  http_ = std::make_unique<MetricsHttpServer>();
  Status st = http_->Start(host, port, [this] { return Render(); });
  if (!st.ok()) http_.reset();
  return st;
}

void ServerMetrics::StopHttp() {
  if (http_) http_->Stop();
}

int ServerMetrics::port() const { return http_ ? http_->port() : 0; }

void ServerMetrics::SetModel(int num_layers, std::function<EngineStats()> stats) {
  {
    std::lock_guard<std::mutex> lock(f_->mu);
    if (num_layers > 0 && f_->layer_buckets.empty()) {
      for (int l = 0; l < num_layers; ++l) f_->layer_buckets.push_back(l);
      for (const PolicyInfo& p : kPolicies) f_->selection_layer.Add({{"policy", p.name}}, f_->layer_buckets);
    }
  }
  gauges_->Set(std::move(stats));
}

void ServerMetrics::OnRejected(const std::string& status, const std::string& policy) {
  f_->requests.Add({{"status", status}, {"policy", policy}}).Increment();
}

void ServerMetrics::OnRequestFinished(const GenerateRequest& request, const FinishEvent& ev) {
  const std::string policy = PolicyName(request.pruning.policy);
  const prometheus::Labels labels{{"policy", policy}};
  f_->requests.Add({{"status", FinishReasonName(ev.reason)}, {"policy", policy}}).Increment();
  f_->prompt_tokens.Increment(static_cast<double>(ev.usage.prompt_tokens));
  f_->generation_tokens.Increment(static_cast<double>(ev.usage.completion_tokens));

  const Timings& t = ev.timings;
  if (ev.usage.completion_tokens > 0) {
    f_->ttft.Add(labels, kTtftBuckets).Observe(t.ttft_seconds);
    Histogram& tpot = f_->tpot.Add(labels, kTpotBuckets);
    for (double s : t.inter_token_seconds) tpot.Observe(s);
  }
  f_->e2e.Add(labels, kRequestLatencyBuckets).Observe(t.e2e_seconds);
  f_->queue.Add(labels, kRequestLatencyBuckets).Observe(t.queue_seconds);

  const PruningReport& r = ev.pruning;
  if (r.num_prompt_tokens == 0) return;  // never prefilled (cancelled or aborted while waiting)
  f_->prefill.Add(labels, kRequestLatencyBuckets).Observe(r.prefill_seconds);
  if (r.num_prefill_slices > 0) f_->prefill_slices.Add(labels, kSliceBuckets).Observe(r.num_prefill_slices);
  if (r.num_kv_tokens_full > 0) {
    f_->kv_kept_ratio.Add(labels, RatioBuckets())
        .Observe(static_cast<double>(r.num_kv_tokens_kept) / static_cast<double>(r.num_kv_tokens_full));
  }
  if (r.outcome == SelectionOutcome::kNotApplicable) return;
  f_->selection_outcome.Add({{"outcome", SelectionOutcomeName(r.outcome)}, {"policy", policy}}).Increment();
  if (r.outcome == SelectionOutcome::kSelected || r.outcome == SelectionOutcome::kForced) {
    {
      std::lock_guard<std::mutex> lock(f_->mu);
      if (!f_->layer_buckets.empty() && r.selection_layer >= 0) {
        f_->selection_layer.Add(labels, f_->layer_buckets).Observe(r.selection_layer);
      }
    }
    const int64_t pruned = r.num_prompt_tokens - r.num_propagated_tokens;
    if (pruned > 0) f_->pruned_prompt_tokens.Add(labels).Increment(static_cast<double>(pruned));
  }
}

void ServerMetrics::OnStep(const EngineStats& /*stats*/, const StepStats& step) {
  // Gauges are read at scrape time (GaugeCollector); token counters move at request end so that
  // a preempted and recomputed prompt is not counted twice.
  if (step.num_decode_seqs > 0) f_->step_decode.Observe(step.decode_seconds);
  if (step.num_prefill_chunks > 0) {
    f_->step_prefill.Observe(step.prefill_seconds);
    f_->prefill_token_layers.Increment(static_cast<double>(step.num_prefill_token_layers));
  }
}

void ServerMetrics::OnPreemption() { f_->preemptions.Increment(); }

std::string ServerMetrics::Render() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  for (auto& f : gauges_->Collect()) families.push_back(std::move(f));
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace asl::server
