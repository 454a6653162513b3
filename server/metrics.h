// ServerMetrics: the engine's EngineMetrics implemented with prometheus-cpp, plus the server's own
// counters, served on GET /metrics on its own port (MetricsHttpServer). Metric names and bucket
// layouts:
// docs/architecture.md "Metrics" (latency buckets are vLLM's, so its dashboards fit).
//
// Threads: OnRequestFinished / OnStep / OnPreemption run on the engine thread and only touch
// prometheus-cpp metrics (atomics and short internal locks): they never block for long.
// OnRejected runs on gRPC threads. Gauges (KV blocks, running/waiting, memory) are read at scrape
// time from EngineStats on the /metrics thread, so they are never staler than the engine's last
// published snapshot.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "engine/engine.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace asl::server {

class MetricsHttpServer;


class ServerMetrics final : public EngineMetrics {
 public:
  // `model_name`: the served model's name, the model_name label of every engine metric (vLLM's
  // convention; ServedModelName in request_convert.h).
  explicit ServerMetrics(const std::string& model_name);
  ~ServerMetrics() override;

  // Starts serving GET /metrics on host:port (port 0: an ephemeral port). Error naming the address
  // when it cannot bind.
  [[nodiscard]] Status StartHttp(const std::string& host, int port);
  // Stops serving /metrics (before the engine whose stats it reads goes away).
  void StopHttp();
  // The bound port, 0 before StartHttp.
  int port() const;

  // Called once the model is loaded, before the first request: creates asl_selection_layer with
  // one bucket per layer (first call only), and the source of the scrape-time gauges; a null
  // `stats` detaches the engine (before it is destroyed). Any thread.
  void SetModel(int num_layers, std::function<EngineStats()> stats);

  // A request refused before it reached the engine (validation, queue full, draining).
  // `status` is the gRPC code's name in lower case ("invalid_argument").
  void OnRejected(const std::string& status, const std::string& policy);

  // EngineMetrics (engine thread).
  void OnRequestFinished(const GenerateRequest& request, const FinishEvent& event) override;
  void OnStep(const EngineStats& stats, const StepStats& step) override;
  void OnPreemption() override;

  // The text exposition of every metric (what GET /metrics returns); for tests and debugging.
  std::string Render() const;

 private:
  struct Families;
  class GaugeCollector;

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> f_;
  std::shared_ptr<GaugeCollector> gauges_;
  std::unique_ptr<MetricsHttpServer> http_;
};

}  // namespace asl::server
