// asl-gateway: the OpenAI-compatible HTTP front of asl-server (docs/architecture.md).
//
//   POST /v1/chat/completions, POST /v1/completions   JSON or SSE (stream: true)
//   GET  /v1/models, GET /v1/models/{id}              the served model (404 for another id)
//   POST /tokenize, POST /detokenize                  vLLM's shapes, by asl-server's tokenizer
//   GET  /version                                     {"version": ...}
//   GET  /health                                      200 when the backend's gRPC health is SERVING
// Every response carries x-request-id (request_id.h).
//
// Threads: cpp-httplib's listener thread accepts; each HTTP connection is served by one thread of
// a pool of `num_threads`, which also runs that request's blocking gRPC call. A streaming request
// holds its thread until the stream ends, so num_threads bounds concurrent streams.
#pragma once

#include <memory>
#include <string>

namespace httplib {
class Server;
}

namespace asl::gateway {

class Backend;

struct GatewayOptions {
  std::string listen_host = "0.0.0.0";
  int listen_port = 8080;            // 0: pick a free port (see Gateway::port)
  std::string backend = "127.0.0.1:50051";
  std::string model_name;            // enforced when set; empty: the backend's name, any accepted
  int num_threads = 64;              // HTTP worker threads = concurrent requests served
  double request_timeout_seconds = 0;  // gRPC deadline of a generation; 0 = none
  size_t max_body_bytes = 16u << 20;
  int max_message_bytes = 16 << 20;  // gRPC message limit (a long token-id prompt is ~5 B/token)
};

class Gateway {
 public:
  explicit Gateway(GatewayOptions options);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Binds the listening socket. Returns false (and logs why) when the address cannot be bound.
  [[nodiscard]] bool Bind();
  // The bound port (after Bind).
  int port() const { return port_; }
  // Serves until Stop(); call after Bind. Blocks the calling thread.
  void Serve();
  // Stops accepting and makes Serve() return. Safe from any thread (not from a signal handler).
  void Stop();

 private:
  void RegisterRoutes();

  GatewayOptions options_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;
};

}  // namespace asl::gateway
