// asl-gateway: the OpenAI-compatible HTTP front of asl-server (docs/architecture.md).
//
//   POST /v1/chat/completions, POST /v1/completions   JSON or SSE (stream: true)
//   GET  /v1/models, GET /v1/models/{id}              the served model (404 for another id)
//   POST /tokenize, POST /detokenize                  vLLM's shapes, by asl-server's tokenizer
//   GET  /version                                     {"version": ...}
//   GET  /health                                      200 when the backend's gRPC health is SERVING
// Every response carries x-request-id (request_id.h).
//
// Security (all off by default): API keys (`Authorization: Bearer KEY` on every route but /health,
// else 401 with OpenAI's error body, code invalid_api_key); HTTPS from PEM files (cpp-httplib's
// SSLServer, OpenSSL); CORS for the listed origins (preflight OPTIONS answered with
// Access-Control-Allow-*); the backend channel with its own key and TLS (security/grpc_security.h).
//
// Threads: cpp-httplib's listener thread accepts; each HTTP connection is served by one thread of
// a pool of `num_threads`, which also runs that request's blocking gRPC call. A streaming request
// holds its thread until the stream ends, so num_threads bounds concurrent streams: generations
// take at most num_threads - clamp(num_threads / 8, 1, 16) workers, and a completion request beyond
// that gets 429 (gateway_at_capacity, Retry-After: 1) at once from a worker kept free, instead of
// waiting unseen in httplib's queue.
//
// Drain: BeginDrain() closes the listening socket (new connections are refused) and answers any
// further request on an open keep-alive connection with 503; requests and SSE streams in flight run to their
// end, and Serve() returns once the last one has (asl-gateway's main bounds this by --drain-seconds).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "security/grpc_security.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}

namespace asl::gateway {

class Backend;

struct GatewayOptions {
  std::string listen_host = "127.0.0.1";
  int listen_port = 8080;            // 0: pick a free port (see Gateway::port)
  std::string backend = "127.0.0.1:50051";
  std::string model_name;            // enforced when set; empty: the backend's name, any accepted
  int num_threads = 256;             // HTTP worker threads (see Threads above)
  double request_timeout_seconds = 0;  // gRPC deadline of a generation; 0 = none
  // How chat replies to requests with tools are parsed for tool calls: auto (the format the
  // model's chat template teaches), hermes, llama3_json or none (server/gateway/tool_calls.h).
  std::string tool_call_parser = "auto";
  size_t max_body_bytes = 16u << 20;
  int max_message_bytes = 16 << 20;  // gRPC message limit (a long token-id prompt is ~5 B/token)
  std::vector<std::string> api_keys;         // keys clients must send; empty: no authentication
  std::string tls_cert_file;                 // HTTPS: certificate chain (PEM); empty: plain HTTP
  std::string tls_key_file;                  // HTTPS: its private key (PEM)
  std::string tls_client_ca_file;            // HTTPS: clients must present a certificate it signed
  std::vector<std::string> cors_allow_origins;  // origins allowed cross-origin ("*": any); empty: no CORS
  security::ClientSecurity backend_security;    // key and TLS of the backend channel
};

class Gateway {
 public:
  // nullptr with *error (naming the file) when a TLS file cannot be read or loaded.
  static std::unique_ptr<Gateway> Create(GatewayOptions options, std::string* error);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Binds the listening socket. Returns false (and logs why) when the address cannot be bound.
  [[nodiscard]] bool Bind();
  // The bound port (after Bind).
  int port() const { return port_; }
  // Serves until Stop(); call after Bind. Blocks the calling thread.
  void Serve();
  // Stops at once, cutting streams, and makes Serve() return. Safe from any thread (not from a
  // signal handler). Does nothing once a drain began.
  void Stop();
  // Stops accepting and lets requests in flight finish (see the top of this file). Safe from any
  // thread (not from a signal handler); only the first call acts.
  void BeginDrain();
  bool draining() const { return draining_.load(); }

 private:
  Gateway(GatewayOptions options, std::unique_ptr<Backend> backend, std::unique_ptr<httplib::Server> http);
  void RegisterRoutes();
  // CORS headers and preflights, before any route.
  void InstallPreRouting();
  // In every route, before its handler: false when the response is already made (the drain's 503,
  // a missing or wrong key's 401).
  bool Admit(const httplib::Request& req, httplib::Response& res) const;

  GatewayOptions options_;
  security::ApiKeySet api_keys_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;
  std::atomic<int> listen_fd_{-1};   // the listening socket (from httplib's socket options hook)
  std::atomic<bool> draining_{false};
};

}  // namespace asl::gateway
