// MetricsHttpServer: a minimal HTTP/1.1 endpoint for GET /metrics on its own port, one thread.
//
// Why not prometheus-cpp's Exposer: it runs civetweb, which starts its threads with a fixed 100 KiB
// stack; the CUDA libraries that libtorch loads (cuBLASLt alone has ~94 KiB of static TLS) leave
// no room for that stack, pthread_create fails with EINVAL and the Exposer cannot start. A scrape
// endpoint needs nothing civetweb offers beyond what this does.
//
// Behaviour: GET /metrics (or /) -> 200 with `render()`'s text; HEAD likewise without a body;
// other paths 404, other methods 405. One request per connection (Connection: close); a client
// that sends nothing for 5 s is dropped, so a stuck client cannot stall the scrape thread for long.
//
// Threads: Start/Stop on one thread; `render` runs on the server's thread.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "engine/common/status.h"

namespace asl::server {

class MetricsHttpServer {
 public:
  MetricsHttpServer() = default;
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Binds host:port (port 0: an ephemeral port) and starts serving. Error naming the address.
  [[nodiscard]] Status Start(const std::string& host, int port, std::function<std::string()> render);
  // Stops serving and joins the thread; idempotent.
  void Stop();
  int port() const { return port_; }

 private:
  void Run();
  void Serve(int fd);

  std::function<std::string()> render_;
  int listen_fd_ = -1;
  int wake_fd_[2] = {-1, -1};  // a pipe: Stop writes to wake the poll
  int port_ = 0;
  std::thread thread_;
};

}  // namespace asl::server
