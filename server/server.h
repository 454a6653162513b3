// AslServer: the process's pieces and their order. Start listens (health NOT_SERVING, calls
// UNAVAILABLE) before the model loads, so orchestrators see a live but not-ready server;
// LoadModel turns it SERVING; Shutdown drains (docs/architecture.md, lifecycle):
//   health NOT_SERVING -> new calls UNAVAILABLE -> Engine::Shutdown(drain, grace) -> gRPC
//   server Shutdown (streams finish their last writes) -> return.
//
// Threads: every method on the main thread, in the order Start, LoadModel, Shutdown.
#pragma once

#include <memory>

#include "config/server_config.h"
#include "engine/engine.h"
#include "security/api_keys.h"
#include "security/grpc_security.h"

namespace grpc {
class Server;
}

namespace asl::server {

class GenerationService;
class ServerMetrics;

// What the security keys of the configuration point to, read once at startup (LoadServerSecurity).
struct ServerSecurity {
  std::vector<std::string> api_keys;  // empty: no authentication
  security::ServerTls tls;            // !enabled(): plaintext gRPC
};

// Reads server.api_key_file, config::kApiKeysEnvVar and the TLS files. The error names the file
// or variable (asl-server exits 2 with it).
[[nodiscard]] StatusOr<ServerSecurity> LoadServerSecurity(const config::ServerConfig& config);

class AslServer {
 public:
  explicit AslServer(config::ServerConfig config, ServerSecurity security = {});
  ~AslServer();
  AslServer(const AslServer&) = delete;
  AslServer& operator=(const AslServer&) = delete;

  // Serves /metrics and listens for gRPC. Errors name the port that could not be bound.
  [[nodiscard]] Status Start();
  // Loads the model and allocates the KV pool (blocks for as long as that takes), then serves.
  [[nodiscard]] Status LoadModel();
  // Graceful stop; safe to call after a failed Start or LoadModel, and more than once.
  void Shutdown();

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const;

 private:
  void SetHealth(bool serving);

  config::ServerConfig config_;
  ServerSecurity security_;
  // Declaration order is destruction order reversed: the gRPC server goes first, the engine last.
  std::unique_ptr<Engine> engine_;
  std::shared_ptr<ServerMetrics> metrics_;
  std::unique_ptr<GenerationService> service_;
  std::unique_ptr<grpc::Server> server_;
  int grpc_port_ = 0;
  bool shut_down_ = false;
};

// A relative model path that does not exist in the working directory is looked up in the source
// tree (so that `asl-server` with no arguments finds the default model from any directory).
std::string ResolveModelPath(const std::string& path);

}  // namespace asl::server
