#include "server/metrics_http.h"

#include <httplib.h>

#include <chrono>

namespace asl::server {
namespace {

constexpr int kIdleSeconds = 5;
constexpr size_t kWorkers = 8;  // concurrent scrapes plus idle keep-alive connections

}  // namespace

MetricsHttpServer::MetricsHttpServer() : http_(std::make_unique<httplib::Server>()) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

Status MetricsHttpServer::Start(const std::string& host, int port, std::function<std::string()> render) {
  const std::string address = host + ":" + std::to_string(port);
  http_->new_task_queue = [] { return new httplib::ThreadPool(kWorkers); };
  http_->set_keep_alive_timeout(kIdleSeconds);
  http_->set_read_timeout(kIdleSeconds, 0);
  http_->set_write_timeout(kIdleSeconds, 0);
  http_->set_payload_max_length(8192);
  const auto serve = [render = std::move(render)](const httplib::Request&, httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  };
  for (const char* path : {"/metrics", "/"}) http_->Get(path, serve);  // GET routes answer HEAD too
  http_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.status == 404 && (req.path == "/metrics" || req.path == "/")) {
      res.status = 405;
      res.set_header("Allow", "GET, HEAD");
      res.set_content("only GET and HEAD\n", "text/plain");
    } else if (res.status == 404) {
      res.set_content("see /metrics\n", "text/plain");
    }
  });
  if (port == 0) {
    port_ = http_->bind_to_any_port(host);
  } else {
    port_ = http_->bind_to_port(host, port) ? port : -1;
  }
  if (port_ < 0) {
    port_ = 0;
    return Unavailable("server.metrics_port: cannot serve /metrics on " + address);
  }
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  // httplib's stop() is a no-op until the accept loop runs: wait for it, so that Stop() always ends it.
  while (!http_->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return Status::Ok();
}

void MetricsHttpServer::Stop() {
  if (thread_.joinable()) {
    http_->stop();
    thread_.join();
  }
}

}  // namespace asl::server
