// MetricsHttpServer: GET /metrics on its own port, served by cpp-httplib (a thread pool, so
// concurrent scrapes and idle connections never queue behind each other).
//
// Why not prometheus-cpp's Exposer: it runs civetweb, which starts its threads with a fixed 100 KiB
// stack; the CUDA libraries that libtorch loads (cuBLASLt alone has ~94 KiB of static TLS) leave
// no room for that stack, pthread_create fails with EINVAL and the Exposer cannot start.
// cpp-httplib's workers are std::threads with the default stack.
//
// Behaviour: GET /metrics (or /) -> 200 with `render()`'s text (Prometheus text format 0.0.4);
// HEAD likewise without a body; other paths 404; other methods on those paths 405 with Allow.
// Keep-alive connections are served (a Prometheus scraper reuses its connection); one that sends
// nothing for 5 s is closed, and holds only its own worker meanwhile.
//
// Threads: Start/Stop on one thread; `render` runs on the pool's threads (it must be thread-safe).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "engine/common/status.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace asl::server {

class MetricsHttpServer {
 public:
  MetricsHttpServer();
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Binds host:port (port 0: an ephemeral port) and starts serving. Error naming the address.
  [[nodiscard]] Status Start(const std::string& host, int port, std::function<std::string()> render);
  // Stops serving and joins the threads; idempotent.
  void Stop();
  int port() const { return port_; }

 private:
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;
  std::thread thread_;
};

}  // namespace asl::server
