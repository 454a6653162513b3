#include "server/gateway/gateway.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>

#include "server/gateway/backend.h"
#include "server/gateway/completion_handler.h"
#include "server/gateway/errors.h"
#include "server/gateway/openai_request.h"
#include "server/gateway/openai_response.h"
#include "server/gateway/request_id.h"
#include "version/version.h"

namespace asl::gateway {
namespace {

using nlohmann::json;

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void SendError(httplib::Response& res, const ApiError& e) {
  for (const auto& [name, value] : ErrorHeaders(e)) res.set_header(name, value);
  SendJson(res, e.http_status, ToJson(e));
}

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::unique_ptr<Gateway> Gateway::Create(GatewayOptions options, std::string* error) {
  std::unique_ptr<httplib::Server> http;
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty() || !options.tls_client_ca_file.empty()) {
    if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
      *error = "HTTPS needs both --tls-cert-file and --tls-key-file";
      return nullptr;
    }
    // Read them first: SSLServer only says "invalid", not which file or why.
    security::ServerTls tls;
    if (!security::LoadServerTls(options.tls_cert_file, options.tls_key_file, options.tls_client_ca_file, &tls,
                                 error)) {
      return nullptr;
    }
    auto ssl = std::make_unique<httplib::SSLServer>(
        options.tls_cert_file.c_str(), options.tls_key_file.c_str(),
        options.tls_client_ca_file.empty() ? nullptr : options.tls_client_ca_file.c_str());
    if (!ssl->is_valid()) {
      *error = "HTTPS: OpenSSL cannot use " + options.tls_cert_file + " with " + options.tls_key_file +
               (options.tls_client_ca_file.empty() ? "" : " and " + options.tls_client_ca_file) +
               " (a certificate and its matching private key, PEM)";
      return nullptr;
    }
    http = std::move(ssl);
  } else {
    http = std::make_unique<httplib::Server>();
  }
  std::unique_ptr<Backend> backend =
      Backend::Create(options.backend, options.max_message_bytes, options.backend_security, error);
  if (backend == nullptr) {
    *error = "backend: " + *error;
    return nullptr;
  }
  return std::unique_ptr<Gateway>(new Gateway(std::move(options), std::move(backend), std::move(http)));
}

Gateway::Gateway(GatewayOptions options, std::unique_ptr<Backend> backend, std::unique_ptr<httplib::Server> http)
    : options_(std::move(options)),
      api_keys_(options_.api_keys),
      backend_(std::move(backend)),
      http_(std::move(http)) {
  const int num_threads = std::max(1, options_.num_threads);
  http_->new_task_queue = [num_threads] { return new httplib::ThreadPool(static_cast<size_t>(num_threads)); };
  http_->set_payload_max_length(options_.max_body_bytes);
  // httplib applies its socket options to the listening socket only; keeping its descriptor lets
  // BeginDrain shut it down without httplib's stop(), which also cuts running SSE streams.
  http_->set_socket_options([this](socket_t sock) {
    httplib::default_socket_options(sock);
    int none = -1;
    listen_fd_.compare_exchange_strong(none, sock);
  });
  InstallPreRouting();
  RegisterRoutes();
}

Gateway::~Gateway() { Stop(); }

void Gateway::InstallPreRouting() {
  const std::vector<std::string> origins = options_.cors_allow_origins;
  const bool any_origin = std::find(origins.begin(), origins.end(), "*") != origins.end();
  // The one pre-routing handler (httplib keeps one): x-request-id, then CORS.
  http_->set_pre_routing_handler([origins, any_origin](const httplib::Request& req, httplib::Response& res) {
    using R = httplib::Server::HandlerResponse;
    // x-request-id on every response: the client's (sanitised) or a new one, set before routing so
    // that handlers read it from the response (and send it to the server).
    res.set_header("x-request-id", RequestIdFor(req.get_header_value("x-request-id")));
    // CORS: the allowed origin is echoed (or "*") on every answer, errors included, so that a
    // browser page can read them; a preflight is answered here, before any key check (browsers
    // send no credentials on it).
    const std::string origin = req.get_header_value("Origin");
    const bool cors = !origin.empty() && !origins.empty() &&
                      (any_origin || std::find(origins.begin(), origins.end(), origin) != origins.end());
    if (!cors) return R::Unhandled;
    res.set_header("Access-Control-Allow-Origin", any_origin ? "*" : origin);
    if (!any_origin) res.set_header("Vary", "Origin");
    res.set_header("Access-Control-Expose-Headers", "x-request-id, Retry-After");
    if (req.method == "OPTIONS" && req.has_header("Access-Control-Request-Method")) {
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      const std::string asked = req.get_header_value("Access-Control-Request-Headers");
      res.set_header("Access-Control-Allow-Headers", asked.empty() ? "Authorization, Content-Type" : asked);
      res.set_header("Access-Control-Max-Age", "600");
      res.status = 204;
      return R::Handled;
    }
    return R::Unhandled;
  });
}

bool Gateway::Admit(const httplib::Request& req, httplib::Response& res) const {
  if (draining_.load()) {
    res.set_header("Connection", "close");
    ApiError e;
    e.http_status = 503;
    e.type = "service_unavailable";
    e.message = "the gateway is shutting down; retry on another replica";
    SendJson(res, 503, ToJson(e));
    return false;
  }
  // /health stays open for probes; every other route needs a key when keys are set.
  if (api_keys_.enabled() && req.path != "/health") {
    const std::string auth = req.get_header_value("Authorization");
    if (!api_keys_.CheckAuthorization(auth)) {
      ApiError e;
      e.http_status = 401;
      e.type = "invalid_request_error";
      e.code = "invalid_api_key";
      e.message = auth.empty() ? "You didn't provide an API key. Send it in an Authorization header using Bearer "
                                 "auth (Authorization: Bearer YOUR_KEY)."
                               : "Incorrect API key provided.";
      res.set_header("WWW-Authenticate", "Bearer");
      SendJson(res, 401, ToJson(e));
      return false;
    }
  }
  return true;
}

void Gateway::RegisterRoutes() {
  // A few HTTP workers stay free of generations, so that a request beyond the limit (and /health,
  // /metrics-style routes) is answered at once instead of queueing behind the streams.
  const int threads = std::max(1, options_.num_threads);
  const int reserve = std::clamp(threads / 8, 1, 16);
  const CompletionHandlerOptions handler_options{options_.model_name, options_.request_timeout_seconds,
                                                 options_.tool_call_parser, std::make_shared<std::atomic<int>>(0),
                                                 std::max(1, threads - reserve)};
  Backend* backend = backend_.get();
  // The post-routing handler covers x-request-id on responses no route made (404, 413); the
  // pre-routing handler (InstallPreRouting) sets it on all others.
  http_->set_post_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.has_header("x-request-id")) {
      res.set_header("x-request-id", RequestIdFor(req.get_header_value("x-request-id")));
    }
  });
  // Every route goes through `route`, so that a wrong method on an existing path is a 405 with an
  // Allow header (not httplib's 404). GET routes answer HEAD too (httplib).
  std::map<std::string, std::string> allow;
  auto route = [&](const std::string& method, const std::string& path, httplib::Server::Handler inner) {
    // The drain's 503 and the key check run here, once httplib has read the body: answering from
    // the pre-routing handler would leave a POST's body unread on a keep-alive connection, where
    // httplib would parse it as the next request.
    httplib::Server::Handler handler = [this, inner = std::move(inner)](const httplib::Request& req,
                                                                         httplib::Response& res) {
      if (Admit(req, res)) inner(req, res);
    };
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
  // The model info, or false after sending the backend's error.
  auto model_info = [backend](v1::ModelInfo* info, httplib::Response& res) {
    const grpc::Status st = backend->GetModelInfo(info, 5.0);
    if (st.ok()) return true;
    ApiError e = FromGrpcStatus(st);
    if (e.http_status == 400) e.http_status = 500;
    SendError(res, e);
    return false;
  };
  route("GET", "/v1/models", [model_info, model_name](const httplib::Request&, httplib::Response& res) {
    v1::ModelInfo info;
    if (!model_info(&info, res)) return;
    SendJson(res, 200, {{"object", "list"},
                        {"data", json::array({ModelJson(ModelId(model_name, info), info, UnixNow())})}});
  });
  // GET /v1/models/{id}: the model when the id is ours, else OpenAI's 404. (Not in `allow`: its
  // path is a pattern; other methods on it are 404.)
  http_->Get(R"(/v1/models/(.+))", [this, model_info, model_name](const httplib::Request& req, httplib::Response& res) {
    if (!Admit(req, res)) return;  // the drain and the key check, as `route` adds them
    v1::ModelInfo info;
    if (!model_info(&info, res)) return;
    const std::string id = ModelId(model_name, info);
    if (req.matches[1] != id) {
      ApiError e;
      e.http_status = 404;
      e.type = "invalid_request_error";
      e.param = "model";
      e.code = "model_not_found";
      e.message = "The model '" + std::string(req.matches[1]) + "' does not exist";
      SendError(res, e);
      return;
    }
    SendJson(res, 200, ModelJson(id, info, UnixNow()));
  });

  // vLLM's /tokenize and /detokenize, by asl-server's tokenizer.
  route("POST", "/tokenize", [backend, model_info](const httplib::Request& req, httplib::Response& res) {
    ParsedTokenize parsed;
    ApiError error;
    if (!ParseTokenizeRequest(req.body, &parsed, &error)) {
      SendError(res, error);
      return;
    }
    v1::TokenizeResponse out;
    const grpc::Status st = backend->Tokenize(parsed.grpc, &out, res.get_header_value("x-request-id"), 30.0);
    if (!st.ok()) {
      SendError(res, FromGrpcStatus(st));
      return;
    }
    v1::ModelInfo info;
    if (!model_info(&info, res)) return;
    json body = {{"tokens", json(out.token_ids())},
                 {"count", out.token_ids_size()},
                 {"max_model_len", info.context_length()},
                 {"token_strs", parsed.return_token_strs ? json(out.pieces()) : json(nullptr)}};
    SendJson(res, 200, body);
  });
  route("POST", "/detokenize", [backend](const httplib::Request& req, httplib::Response& res) {
    v1::DetokenizeRequest parsed;
    ApiError error;
    if (!ParseDetokenizeRequest(req.body, &parsed, &error)) {
      SendError(res, error);
      return;
    }
    v1::DetokenizeResponse out;
    const grpc::Status st = backend->Detokenize(parsed, &out, res.get_header_value("x-request-id"), 30.0);
    if (!st.ok()) {
      ApiError e = FromGrpcStatus(st);
      if (e.param.rfind("prompt", 0) == 0) {  // the server names DetokenizeRequest.token_ids[i]
        e.message = "tokens" + e.message.substr(6);
        e.param = "tokens" + e.param.substr(6);
      }
      SendError(res, e);
      return;
    }
    SendJson(res, 200, {{"prompt", out.text()}});
  });
  // GET /version: the build's version and commit (version/version.h, what --version prints).
  route("GET", "/version", [](const httplib::Request&, httplib::Response& res) {
    SendJson(res, 200, {{"version", Version()}, {"revision", GitCommit()}});
  });
  // POST /reset_prefix_cache (vLLM's route): drops every cached block no request holds, through the
  // server's ResetPrefixCache. 200 with {"status":"ok"}; the key check applies as on every route.
  route("POST", "/reset_prefix_cache", [backend](const httplib::Request& req, httplib::Response& res) {
    const grpc::Status st = backend->ResetPrefixCache(res.get_header_value("x-request-id"), 30.0);
    if (!st.ok()) {
      SendError(res, FromGrpcStatus(st));
      return;
    }
    SendJson(res, 200, {{"status", "ok"}});
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
  const bool https = !options_.tls_cert_file.empty();
  spdlog::info("asl-gateway listening on {}://{}:{} (backend {}{}, {} worker threads; API keys: {}; CORS: {})",
               https ? "https" : "http", options_.listen_host, port_, options_.backend,
               options_.backend_security.tls ? " over TLS" : "", options_.num_threads,
               options_.api_keys.empty() ? "off" : std::to_string(options_.api_keys.size()),
               options_.cors_allow_origins.empty() ? "off" : std::to_string(options_.cors_allow_origins.size()) +
                                                               " origin(s)");
  http_->listen_after_bind();
}

void Gateway::Stop() {
  if (http_ && !draining_.load()) http_->stop();
}

void Gateway::BeginDrain() {
  if (draining_.exchange(true)) return;
  // Shut the listening socket down: httplib's accept() fails, its accept loop ends and it joins
  // its workers, each finishing the request (and stream) it serves. Its stop() is not used: it
  // also tells running chunked responses (our SSE streams) to end.
  const int fd = listen_fd_.load();
  if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
}

}  // namespace asl::gateway
