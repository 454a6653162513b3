// asl-gateway: OpenAI-compatible HTTP server in front of asl-server (see gateway.h).
//
//   asl-gateway --backend 127.0.0.1:50051 --listen 127.0.0.1:8080 [--model-name NAME]
//
// Every flag is also an environment variable ASL_GATEWAY_<FLAG> (--drain-seconds:
// ASL_GATEWAY_DRAIN_SECONDS); a flag wins over its variable. API keys are read from files or the
// variables ASL_GATEWAY_API_KEYS / ASL_GATEWAY_BACKEND_API_KEY, never from the command line.
// SIGTERM/SIGINT drain (gateway.h) for up to --drain-seconds, then exit 0; a second signal exits
// at once (status 1).
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <future>
#include <memory>
#include <pthread.h>
#include <thread>

#include "security/api_keys.h"
#include "server/gateway/gateway.h"
#include "version/cli.h"

// jemalloc's built-in options (server/CMakeLists.txt links it; glibc's malloc ignores this, and
// MALLOC_CONF still applies on top): no per-thread caches. Each request in flight holds one of the
// --threads workers, and a jemalloc thread cache is trimmed only by its own thread's allocations, so
// the caches of workers that served a burst and then sat idle stayed full: after 25 minutes of soak
// they held 38 MB of a 41 MB heap, and RSS had grown 13 % since the warm-up (bench/results/soak.md).
// Without them each allocation takes its arena's lock (8 arenas on 2 cores), cheap at the
// gateway's rate of allocations.
extern "C" {
extern const char* malloc_conf;
const char* malloc_conf = "tcache:false";
}

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

void FlushLogsAndExit(int status) {
  spdlog::default_logger()->flush();
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(status);
}

}  // namespace

int main(int argc, char** argv) {
  asl::gateway::GatewayOptions options;
  std::string listen = "127.0.0.1:8080";
  std::string log_level = "info";
  std::string api_key_file, backend_api_key_file;
  // How long a SIGTERM lets requests and streams in flight finish (asl-server's drain is 30 s).
  double drain_seconds = 30;
  asl::security::ClientSecurity& backend = options.backend_security;
  CLI::App app{"asl-gateway: OpenAI-compatible HTTP/SSE front end of asl-server (a gRPC client)"};
  app.add_option("--listen", listen,
                 "HTTP address to listen on, host:port (port 0: any free port; 0.0.0.0:PORT: all interfaces)")
      ->capture_default_str();
  app.add_option("--backend", options.backend, "asl-server gRPC address, host:port")->capture_default_str();
  app.add_option("--model-name", options.model_name,
                 "Model name /v1/models lists; when set, requests naming another model get 404 "
                 "(default: the backend's model name, and any requested name is accepted)");
  app.add_option("--threads", options.num_threads,
                 "HTTP worker threads; generations use all but clamp(threads/8, 1, 16) of them, and a completion "
                 "request beyond that gets 429 at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--request-timeout", options.request_timeout_seconds,
                 "Deadline of one generation in seconds (HTTP 504 when it passes); 0 = none")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--tool-call-parser", options.tool_call_parser,
                 "How replies to chat requests with tools become tool_calls: auto (the format the model's chat "
                 "template teaches), hermes, llama3_json or none")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "hermes", "llama3_json", "none"}));
  app.add_option("--max-body-bytes", options.max_body_bytes, "Largest request body accepted (HTTP 413 beyond)")
      ->capture_default_str();
  app.add_option("--max-message-bytes", options.max_message_bytes, "Largest gRPC message sent or received")
      ->capture_default_str();
  app.add_option("--drain-seconds,--drain-timeout", drain_seconds,
                 "On SIGTERM/SIGINT: stop accepting, let requests and streams in flight finish for up to this "
                 "many seconds, then exit 0 (a second signal exits at once)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--api-key-file", api_key_file,
                 "File of API keys, one per line, clients must send as 'Authorization: Bearer KEY' (401 "
                 "otherwise; /health stays open); keys may also be given in ASL_GATEWAY_API_KEYS "
                 "(comma separated). Default: no keys");
  app.add_option("--tls-cert-file", options.tls_cert_file, "HTTPS: certificate chain (PEM); default: plain HTTP");
  app.add_option("--tls-key-file", options.tls_key_file, "HTTPS: the certificate's private key (PEM)");
  app.add_option("--tls-client-ca-file", options.tls_client_ca_file,
                 "HTTPS: require client certificates signed by this CA (PEM)");
  app.add_option("--cors-allow-origin", options.cors_allow_origins,
                 "Origin allowed to call from a browser (repeatable or comma separated; * = any): answers "
                 "preflight OPTIONS and adds Access-Control-Allow-Origin. Default: none (no CORS headers)")
      ->delimiter(',');
  app.add_option("--backend-api-key-file", backend_api_key_file,
                 "File whose first key is sent to asl-server as 'authorization: Bearer KEY' (or the key in "
                 "ASL_GATEWAY_BACKEND_API_KEY)");
  app.add_flag("--backend-tls", backend.tls, "TLS to asl-server (implied by --backend-ca-file)");
  app.add_option("--backend-ca-file", backend.ca_file, "TLS: CA certificates (PEM) asl-server's certificate must "
                                                       "chain to; default with --backend-tls: the system's");
  app.add_option("--backend-cert-file", backend.cert_file, "TLS: client certificate (PEM) for mutual TLS");
  app.add_option("--backend-key-file", backend.key_file, "TLS: the client certificate's private key (PEM)");
  app.add_option("--backend-tls-server-name", backend.server_name,
                 "TLS: the name asl-server's certificate must carry (default: the --backend host)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  asl::AddVersionFlag(&app, "asl-gateway");
  asl::SetEnvNames(&app, "ASL_GATEWAY_");
  CLI11_PARSE(app, argc, argv);

  spdlog::set_level(spdlog::level::from_str(log_level));
  if (!SplitHostPort(listen, &options.listen_host, &options.listen_port)) {
    spdlog::error("--listen: expected host:port, got '{}'", listen);
    return 2;
  }
  std::string error;
  if (!asl::security::LoadApiKeys(api_key_file, "ASL_GATEWAY_API_KEYS", &options.api_keys, &error)) {
    std::fprintf(stderr, "asl-gateway: %s%s\n", api_key_file.empty() ? "" : "--api-key-file: ", error.c_str());
    return 2;
  }
  std::vector<std::string> backend_keys;
  if (!asl::security::LoadApiKeys(backend_api_key_file, "ASL_GATEWAY_BACKEND_API_KEY", &backend_keys, &error)) {
    std::fprintf(stderr, "asl-gateway: %s%s\n", backend_api_key_file.empty() ? "" : "--backend-api-key-file: ",
                 error.c_str());
    return 2;
  }
  if (!backend_keys.empty()) backend.api_key = backend_keys.front();
  if (!backend.ca_file.empty() || !backend.cert_file.empty()) backend.tls = true;

  // A client that goes away mid-stream must fail our write, not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  // SIGINT/SIGTERM are taken by one thread with sigwait; block them before any other thread starts
  // so that no worker receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::unique_ptr<asl::gateway::Gateway> gateway = asl::gateway::Gateway::Create(options, &error);
  if (gateway == nullptr) {
    std::fprintf(stderr, "asl-gateway: %s\n", error.c_str());
    return 2;
  }
  if (!gateway->Bind()) return 1;
  asl::gateway::Gateway* gw = gateway.get();
  // Set once BeginDrain has returned: Serve() can return (the listening socket shut down) while
  // the signal thread is still inside BeginDrain, and main must not destroy the gateway under it
  // (ThreadSanitizer, tests/sanitize: the kernel orders shutdown() before accept() failing, but
  // no memory access of ours does). Shared: the thread may outlive main's locals.
  auto drain_begun = std::make_shared<std::promise<void>>();
  std::future<void> drain_begun_future = drain_begun->get_future();
  std::thread signal_thread([gw, &signals, drain_seconds, drain_begun] {
    int sig = 0;
    sigwait(&signals, &sig);
    spdlog::info("signal {}: draining for up to {:g} s (new connections refused, requests in flight finish; a "
                 "second signal exits at once)",
                 sig, drain_seconds);
    gw->BeginDrain();
    drain_begun->set_value();
    timespec grace{};
    grace.tv_sec = static_cast<time_t>(drain_seconds);
    grace.tv_nsec = static_cast<long>((drain_seconds - static_cast<double>(grace.tv_sec)) * 1e9);
    int again = -1;
    do {
      again = sigtimedwait(&signals, nullptr, &grace);  // EINTR: a non-blocked signal; wait on
    } while (again < 0 && errno == EINTR);
    if (again > 0) {
      std::fprintf(stderr, "asl-gateway: second signal %d during the drain: exiting now\n", again);
      FlushLogsAndExit(1);
    }
    spdlog::warn("drain: {:g} s passed with requests still in flight: exiting, which cuts them", drain_seconds);
    FlushLogsAndExit(0);
  });
  signal_thread.detach();  // exits the process with main; it owns nothing
  gateway->Serve();
  if (gateway->draining()) drain_begun_future.wait();
  spdlog::info("asl-gateway stopped{}", gateway->draining() ? ": drained, every request in flight finished" : "");
  spdlog::default_logger()->flush();
  return 0;
}
