// asl-gateway: OpenAI-compatible HTTP server in front of asl-server (see gateway.h).
//
//   asl-gateway --backend 127.0.0.1:50051 --listen 0.0.0.0:8080 [--model-name NAME]
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <csignal>
#include <pthread.h>
#include <thread>

#include "server/gateway/gateway.h"

namespace {

// "host:port" -> parts; the host may be empty ("":8080 = all interfaces) or a bracketed IPv6.
bool SplitHostPort(const std::string& s, std::string* host, int* port) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  *host = s.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  if (host->empty()) *host = "0.0.0.0";
  try {
    size_t used = 0;
    *port = std::stoi(s.substr(colon + 1), &used);
    return used == s.size() - colon - 1 && *port >= 0 && *port <= 65535;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

int main(int argc, char** argv) {
  asl::gateway::GatewayOptions options;
  std::string listen = "0.0.0.0:8080";
  std::string log_level = "info";
  CLI::App app{"asl-gateway: OpenAI-compatible HTTP/SSE front end of asl-server (a gRPC client)"};
  app.add_option("--listen", listen, "HTTP address to listen on, host:port (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--backend", options.backend, "asl-server gRPC address, host:port")->capture_default_str();
  app.add_option("--model-name", options.model_name,
                 "Model name /v1/models lists; when set, requests naming another model get 404 "
                 "(default: the backend's model name, and any requested name is accepted)");
  app.add_option("--threads", options.num_threads, "HTTP worker threads = most concurrent requests")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--request-timeout", options.request_timeout_seconds,
                 "Deadline of one generation in seconds (HTTP 504 when it passes); 0 = none")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-body-bytes", options.max_body_bytes, "Largest request body accepted (HTTP 413 beyond)")
      ->capture_default_str();
  app.add_option("--max-message-bytes", options.max_message_bytes, "Largest gRPC message sent or received")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  CLI11_PARSE(app, argc, argv);

  spdlog::set_level(spdlog::level::from_str(log_level));
  if (!SplitHostPort(listen, &options.listen_host, &options.listen_port)) {
    spdlog::error("--listen: expected host:port, got '{}'", listen);
    return 2;
  }

  // A client that goes away mid-stream must fail our write, not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  // SIGINT/SIGTERM are taken by one thread with sigwait; block them before any other thread starts
  // so that no worker receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  asl::gateway::Gateway gateway(options);
  if (!gateway.Bind()) return 1;
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    spdlog::info("signal {}: stopping", sig);
    gateway.Stop();
  });
  signal_thread.detach();  // exits the process with main; it owns nothing
  gateway.Serve();
  spdlog::info("asl-gateway stopped");
  return 0;
}
