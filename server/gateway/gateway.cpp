#include "server/gateway/gateway.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>

#include "server/gateway/backend.h"
#include "server/gateway/completion_handler.h"
#include "server/gateway/errors.h"
#include "server/gateway/openai_request.h"

namespace asl::gateway {
namespace {

using nlohmann::json;

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

}  // namespace

Gateway::Gateway(GatewayOptions options)
    : options_(std::move(options)),
      backend_(std::make_unique<Backend>(options_.backend, options_.max_message_bytes)),
      http_(std::make_unique<httplib::Server>()) {
  const int num_threads = std::max(1, options_.num_threads);
  http_->new_task_queue = [num_threads] { return new httplib::ThreadPool(static_cast<size_t>(num_threads)); };
  http_->set_payload_max_length(options_.max_body_bytes);
  RegisterRoutes();
}

Gateway::~Gateway() { Stop(); }

void Gateway::RegisterRoutes() {
  const CompletionHandlerOptions handler_options{options_.model_name, options_.request_timeout_seconds};
  Backend* backend = backend_.get();
  // Every route goes through `route`, so that a wrong method on an existing path is a 405 with an
  // Allow header (not httplib's 404). GET routes answer HEAD too (httplib).
  std::map<std::string, std::string> allow;
  auto route = [&](const std::string& method, const std::string& path, httplib::Server::Handler handler) {
    if (method == "GET") {
      http_->Get(path, std::move(handler));
    } else {  // POST
      http_->Post(path, std::move(handler));
    }
    std::string& a = allow[path];
    a += (a.empty() ? "" : ", ") + method + (method == "GET" ? ", HEAD" : "");
  };
  route("POST", "/v1/chat/completions", [backend, handler_options](const httplib::Request& req, httplib::Response& res) {
    HandleCompletion(Endpoint::kChatCompletions, *backend, handler_options, req, res);
  });
  route("POST", "/v1/completions", [backend, handler_options](const httplib::Request& req, httplib::Response& res) {
    HandleCompletion(Endpoint::kCompletions, *backend, handler_options, req, res);
  });

  const std::string model_name = options_.model_name;
  route("GET", "/v1/models", [backend, model_name](const httplib::Request&, httplib::Response& res) {
    v1::ModelInfo info;
    const grpc::Status st = backend->GetModelInfo(&info, 5.0);
    if (!st.ok()) {
      SendJson(res, FromGrpcStatus(st).http_status == 400 ? 500 : FromGrpcStatus(st).http_status,
               ToJson(FromGrpcStatus(st)));
      return;
    }
    const int64_t now =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    json model = {{"id", model_name.empty() ? info.name() : model_name},
                  {"object", "model"},
                  {"created", now},
                  {"owned_by", "asl-serve"},
                  {"root", info.path()},
                  {"max_model_len", info.context_length()},
                  {"asl",
                   {{"arch", info.arch()},
                    {"device", info.device()},
                    {"dtype", info.dtype()},
                    {"num_layers", info.num_layers()},
                    {"vocab_size", info.vocab_size()},
                    {"max_prompt_tokens", info.max_prompt_tokens()},
                    {"kv_blocks_total", info.kv_blocks_total()},
                    {"kv_block_size", info.kv_block_size()},
                    {"kv_bytes_total", info.kv_bytes_total()},
                    {"kv_dtype", info.kv_dtype()},
                    {"policies", json(info.policies())}}}};
    SendJson(res, 200, {{"object", "list"}, {"data", json::array({model})}});
  });

  route("GET", "/health", [backend](const httplib::Request&, httplib::Response& res) {
    bool serving = false;
    const grpc::Status st = backend->CheckHealth(&serving, 2.0);
    if (serving) {
      SendJson(res, 200, {{"status", "ok"}, {"backend", backend->address()}});
    } else {
      SendJson(res, 503, {{"status", "unavailable"},
                          {"backend", backend->address()},
                          {"detail", st.ok() ? "backend is not SERVING" : st.error_message()}});
    }
  });

  http_->set_error_handler([allow](const httplib::Request& req, httplib::Response& res) {
    // Routes that exist answered already; this covers unknown paths (404), known paths with another
    // method (405 + Allow) and bodies over the limit (413), with an OpenAI-style body.
    if (!res.body.empty()) return;
    ApiError e;
    if (auto it = allow.find(req.path); res.status == 404 && it != allow.end()) {
      res.status = 405;
      res.set_header("Allow", it->second);
      e.message = req.method + " is not allowed on " + req.path + " (allowed: " + it->second + ")";
    } else {
      e.message = res.status == 404 ? "no route for " + req.method + " " + req.path
                                    : "request failed with HTTP " + std::to_string(res.status);
    }
    e.http_status = res.status;
    e.type = res.status == 404 ? "not_found" : "invalid_request_error";
    SendJson(res, res.status, ToJson(e));
  });
  http_->set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
    ApiError e;
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& ex) {
      e.message = std::string("internal error: ") + ex.what();
    } catch (...) {
      e.message = "internal error";
    }
    spdlog::error("{} {}: {}", req.method, req.path, e.message);
    SendJson(res, 500, ToJson(e));
  });
}

bool Gateway::Bind() {
  if (options_.listen_port == 0) {
    port_ = http_->bind_to_any_port(options_.listen_host);
    if (port_ <= 0) {
      spdlog::error("cannot bind {}:<any port>", options_.listen_host);
      return false;
    }
  } else {
    if (!http_->bind_to_port(options_.listen_host, options_.listen_port)) {
      spdlog::error("cannot bind {}:{}", options_.listen_host, options_.listen_port);
      return false;
    }
    port_ = options_.listen_port;
  }
  return true;
}

void Gateway::Serve() {
  spdlog::info("asl-gateway listening on http://{}:{} (backend {}, {} worker threads)", options_.listen_host, port_,
               options_.backend, options_.num_threads);
  http_->listen_after_bind();
}

void Gateway::Stop() {
  if (http_) http_->stop();
}

}  // namespace asl::gateway
