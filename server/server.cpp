#include "server/server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>

#include "server/generation_service.h"
#include "server/metrics.h"

#ifndef ASL_SOURCE_DIR
#define ASL_SOURCE_DIR "."
#endif

namespace asl::server {
namespace {

constexpr const char* kServiceName = "asl.v1.Generation";
// After the engine has drained, how long the gRPC server waits for streams to write their last
// message before it cancels them.
constexpr auto kStreamFlushGrace = std::chrono::seconds(5);

}  // namespace

std::string ResolveModelPath(const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty() || fs::path(path).is_absolute() || fs::exists(path)) return path;
  const fs::path in_tree = fs::path(ASL_SOURCE_DIR) / path;
  return fs::exists(in_tree) ? in_tree.string() : path;
}

StatusOr<ServerSecurity> LoadServerSecurity(const config::ServerConfig& config) {
  ServerSecurity out;
  std::string error;
  if (!security::LoadApiKeys(config.api_key_file, config::kApiKeysEnvVar, &out.api_keys, &error)) {
    return InvalidArgument((config.api_key_file.empty() ? "" : "server.api_key_file: ") + error);
  }
  if (!security::LoadServerTls(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file, &out.tls,
                               &error)) {
    return InvalidArgument("server.tls_*: " + error);
  }
  return out;
}

AslServer::AslServer(config::ServerConfig config, ServerSecurity security)
    : config_(std::move(config)), security_(std::move(security)), metrics_(std::make_shared<ServerMetrics>(ServedModelName(config_.engine.model_path))) {
  service_ = std::make_unique<GenerationService>(config_.max_prompt_tokens, metrics_,
                                                 security::ApiKeySet(security_.api_keys));
}

AslServer::~AslServer() {
  Shutdown();
  server_.reset();
  service_.reset();
  // The engine holds the metrics (EngineMetrics) and outlives metrics_; /metrics must stop
  // reading the engine's stats before the engine goes.
  metrics_->StopHttp();
  metrics_->SetModel(0, nullptr);
  engine_.reset();
}

int AslServer::metrics_port() const { return metrics_->port(); }

Status AslServer::Start() {
  if (config_.metrics_port != 0) {
    ASL_RETURN_IF_ERROR(metrics_->StartHttp(config_.host, config_.metrics_port));
    spdlog::info("metrics on http://{}:{}/metrics", config_.host, metrics_->port());
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  const std::string address = config_.host + ":" + std::to_string(config_.grpc_port);
  builder.AddListeningPort(address, security::MakeServerCredentials(security_.tls), &grpc_port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config_.max_message_bytes));
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || grpc_port_ == 0) {
    server_.reset();
    std::string why = "server.grpc_port: cannot listen on " + address;
    if (security_.tls.enabled()) {
      why += " (or gRPC refused the TLS certificate " + config_.tls_cert_file + " with the key " +
             config_.tls_key_file + ": do they match?)";
    }
    return Unavailable(why);
  }
  SetHealth(false);
  spdlog::info("gRPC listening on {}:{} ({}{}; API keys: {}; health NOT_SERVING while the model loads)",
               config_.host, grpc_port_, security_.tls.enabled() ? "TLS" : "plaintext",
               security_.tls.client_ca_pem.empty() ? "" : ", client certificates required",
               security_.api_keys.empty() ? "off" : std::to_string(security_.api_keys.size()));
  return Status::Ok();
}

Status AslServer::LoadModel() {
  EngineConfig engine_config = config_.engine;
  engine_config.model_path = ResolveModelPath(engine_config.model_path);
  const auto t0 = std::chrono::steady_clock::now();
  StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(engine_config, metrics_);
  if (!engine.ok()) return engine.status();
  engine_ = std::move(engine).value();
  Engine* e = engine_.get();
  metrics_->SetModel(static_cast<int>(e->model_info().num_layers), [e] { return e->Stats(); });
  service_->SetEngine(e);
  SetHealth(true);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("serving {} ({} layers, context {}, {} KV blocks) after {:.1f}s; health SERVING",
               e->model_info().name, e->model_info().num_layers, e->model_info().context_length,
               e->model_info().kv_blocks_total, seconds);
  return Status::Ok();
}

void AslServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  const auto grace = std::chrono::milliseconds(static_cast<int64_t>(config_.shutdown_grace_seconds * 1000));
  if (server_) SetHealth(false);
  service_->SetDraining();
  if (engine_) {
    const EngineStats s = engine_->Stats();
    spdlog::info("draining: {} running, {} waiting; grace {:.1f}s", s.num_running, s.num_waiting,
                 config_.shutdown_grace_seconds);
    engine_->Shutdown(/*drain=*/true, grace);
  }
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + kStreamFlushGrace);
    server_->Wait();
  }
  spdlog::info("shut down");
}

void AslServer::SetHealth(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_ ? server_->GetHealthCheckService() : nullptr;
  if (health == nullptr) return;
  health->SetServingStatus(kServiceName, serving);
  health->SetServingStatus(serving);  // every service, the overall "" included
}

}  // namespace asl::server
