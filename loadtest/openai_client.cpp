#include "loadtest/openai_client.h"

#include <httplib.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

namespace asl::loadtest {
namespace {

using nlohmann::json;

void SetTimeouts(httplib::Client& cli, double timeout_s) {
  const auto sec = static_cast<time_t>(timeout_s);
  const auto usec = static_cast<time_t>((timeout_s - static_cast<double>(sec)) * 1e6);
  cli.set_connection_timeout(10);
  // cpp-httplib's default read timeout is 5 s: far shorter than a long prompt's prefill under load.
  cli.set_read_timeout(sec, usec);
  cli.set_write_timeout(sec, usec);
  // The request goes out as two writes (headers, body); without this the body can wait for the
  // delayed ACK of the headers.
  cli.set_tcp_nodelay(true);
  cli.set_keep_alive(false);
}

// A client for one request: scheme, TLS verification, API key, timeouts.
std::unique_ptr<httplib::Client> MakeClient(const OpenAiOptions& o, double timeout_s) {
  auto cli = std::make_unique<httplib::Client>(std::string(o.https ? "https://" : "http://") + o.host + ":" +
                                               std::to_string(o.port));
  if (o.https) {
    cli->enable_server_certificate_verification(true);
    if (!o.ca_file.empty()) cli->set_ca_cert_path(o.ca_file);
  }
  if (!o.api_key.empty()) cli->set_bearer_token_auth(o.api_key);
  SetTimeouts(*cli, timeout_s);
  return cli;
}

int64_t IntOr(const json& obj, const char* key, int64_t fallback) {
  auto it = obj.find(key);
  return it != obj.end() && it->is_number_integer() ? it->get<int64_t>() : fallback;
}

}  // namespace

bool ParseHttpUrl(const std::string& url, std::string* host, int* port, std::string* error) {
  bool https = false;
  if (!ParseHttpUrl(url, host, port, &https, error)) return false;
  if (https) {
    *error = "--target: https is not accepted here (got '" + url + "')";
    return false;
  }
  return true;
}

bool ParseHttpUrl(const std::string& url, std::string* host, int* port, bool* https, std::string* error) {
  *https = url.rfind("https://", 0) == 0;
  const std::string scheme = *https ? "https://" : "http://";
  if (url.rfind(scheme, 0) != 0) {
    *error = "--target: an OpenAI base URL must start with http:// or https:// (got '" + url + "')";
    return false;
  }
  std::string rest = url.substr(scheme.size());
  for (const std::string suffix : {"/", "/v1", "/v1/"}) {
    if (rest.size() > suffix.size() && rest.compare(rest.size() - suffix.size(), suffix.size(), suffix) == 0) {
      rest.resize(rest.size() - suffix.size());
    }
  }
  if (rest.find('/') != std::string::npos) {
    *error = "--target: expected http://host:port or http://host:port/v1 (got '" + url + "')";
    return false;
  }
  const size_t colon = rest.rfind(':');
  *host = colon == std::string::npos ? rest : rest.substr(0, colon);
  *port = *https ? 443 : 80;
  if (colon != std::string::npos) {
    const std::string p = rest.substr(colon + 1);
    char* end = nullptr;
    const long v = std::strtol(p.c_str(), &end, 10);
    if (p.empty() || *end != '\0' || v < 1 || v > 65535) {
      *error = "--target: bad port in '" + url + "'";
      return false;
    }
    *port = static_cast<int>(v);
  }
  if (host->empty()) {
    *error = "--target: no host in '" + url + "'";
    return false;
  }
  return true;
}

void SseParser::Feed(const char* data, size_t size, const std::function<void(const std::string&)>& on_event) {
  for (size_t i = 0; i < size; ++i) {
    const char c = data[i];
    if (c != '\n') {
      line_ += c;
      continue;
    }
    if (!line_.empty() && line_.back() == '\r') line_.pop_back();
    if (line_.empty()) {  // end of an event
      if (has_data_) on_event(data_);
      data_.clear();
      has_data_ = false;
    } else if (line_.rfind("data:", 0) == 0) {
      size_t from = 5;
      if (line_.size() > 5 && line_[5] == ' ') from = 6;
      if (has_data_) data_ += '\n';
      data_.append(line_, from, std::string::npos);
      has_data_ = true;
    }  // ":comment", "event:", "id:", "retry:": not used by these APIs' completions
    line_.clear();
  }
}

int64_t ApplyEvent(const std::string& data, StreamState* state) {
  if (data == "[DONE]") {
    state->done = true;
    return 0;
  }
  const json j = json::parse(data, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    state->error = "malformed event: " + data.substr(0, 200);
    return 0;
  }
  if (auto e = j.find("error"); e != j.end() && !e->is_null()) {
    state->error = e->is_object() && e->contains("message") && (*e)["message"].is_string()
                       ? (*e)["message"].get<std::string>()
                       : e->dump();
    return 0;
  }
  if (auto u = j.find("usage"); u != j.end() && u->is_object()) {
    state->has_usage = true;
    state->usage_prompt_tokens = IntOr(*u, "prompt_tokens", 0);
    state->usage_completion_tokens = IntOr(*u, "completion_tokens", 0);
    if (auto d = u->find("prompt_tokens_details"); d != u->end() && d->is_object()) {
      state->usage_cached_tokens = IntOr(*d, "cached_tokens", 0);
    }
  }
  if (auto a = j.find("asl"); a != j.end() && a->is_object()) state->asl = *a;
  int64_t tokens = 0;
  if (auto choices = j.find("choices"); choices != j.end() && choices->is_array() && !choices->empty()) {
    const json& c = (*choices)[0];
    if (auto t = c.find("tokens"); t != c.end() && t->is_array()) {
      tokens = static_cast<int64_t>(t->size());
    } else if (auto text = c.find("text"); text != c.end() && text->is_string() && !text->get<std::string>().empty()) {
      tokens = 1;
    }
    if (auto f = c.find("finish_reason"); f != c.end() && !f->is_null()) state->finished = true;
  }
  if (tokens > 0) {
    ++state->chunks_with_tokens;
    state->counted_tokens += tokens;
  }
  return tokens;
}

json CompletionBody(const OpenAiOptions& options, const Prompt& prompt, int64_t index) {
  json body = options.body_extra.is_object() ? options.body_extra : json::object();
  body["model"] = options.model;
  if (!prompt.token_ids.empty()) {
    body["prompt"] = prompt.token_ids;
  } else {
    body["prompt"] = prompt.text;
  }
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  if (body.contains("seed") && body["seed"].is_number_unsigned()) {
    body["seed"] = body["seed"].get<uint64_t>() + static_cast<uint64_t>(index);
  }
  return body;
}

RequestResult RunOneOpenAi(const OpenAiOptions& options, const json& body, double run_start_s) {
  RequestResult r;
  std::unique_ptr<httplib::Client> client = MakeClient(options, options.timeout_s);
  httplib::Client& cli = *client;

  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.set_header("Accept", "text/event-stream");
  req.set_header("Content-Type", "application/json");
  req.body = body.dump();

  int http_status = 0;
  std::string error_body;
  SseParser parser;
  StreamState state;
  double t0 = 0, last = 0;
  req.response_handler = [&](const httplib::Response& res) {
    http_status = res.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    const double t = Now();
    if (http_status != 200) {
      if (error_body.size() < 4096) error_body.append(data, std::min<size_t>(n, 4096 - error_body.size()));
      return true;
    }
    parser.Feed(data, n, [&](const std::string& ev) {
      if (ApplyEvent(ev, &state) > 0) {
        if (r.ttft_s < 0) {
          r.ttft_s = t - t0;
        } else {
          r.itl_s.push_back(t - last);
        }
        last = t;
      }
    });
    return true;
  };

  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  t0 = Now();
  r.start_s = t0 - run_start_s;
  const bool sent = cli.send(req, res, err);
  r.e2e_s = Now() - t0;

  r.num_output_tokens = state.has_usage ? state.usage_completion_tokens : state.counted_tokens;
  if (state.has_usage) {
    r.num_prompt_tokens = state.usage_prompt_tokens;
  } else if (auto p = body.find("prompt"); p != body.end() && p->is_array()) {
    r.num_prompt_tokens = static_cast<int64_t>(p->size());
  }
  r.cached_prompt_tokens = state.usage_cached_tokens;
  if (state.asl.is_object()) {
    r.kv_tokens_kept = IntOr(state.asl, "kv_tokens_kept", 0);
    r.kv_tokens_full = IntOr(state.asl, "kv_tokens_full", 0);
    if (auto p = state.asl.find("pruning"); p != state.asl.end() && p->is_object()) {
      r.selection_layer = static_cast<int32_t>(IntOr(*p, "selection_layer", -1));
    }
    if (auto t = state.asl.find("timings"); t != state.asl.end() && t->is_object()) {
      r.server_ttft_s = t->value("ttft_seconds", 0.0);
    }
  }
  if (!sent) {
    r.status_code = httplib::to_string(err);
    r.error = "request failed: " + httplib::to_string(err);
  } else if (http_status != 200) {
    r.status_code = "HTTP_" + std::to_string(http_status);
    r.error = error_body;
  } else if (!state.error.empty()) {
    r.status_code = "STREAM_ERROR";
    r.error = state.error;
  } else if (!state.finished) {
    r.status_code = "NO_COMPLETION";
    r.error = state.done ? "[DONE] without a finish_reason" : "the stream ended without a finish_reason";
  } else {
    r.ok = true;
    r.status_code = "OK";
  }
  return r;
}

std::string FirstModelId(const OpenAiOptions& options, std::string* error) {
  std::unique_ptr<httplib::Client> client = MakeClient(options, 30);
  httplib::Client& cli = *client;
  auto res = cli.Get("/v1/models");
  if (!res) {
    *error = "GET /v1/models: " + httplib::to_string(res.error());
    return "";
  }
  const json j = json::parse(res->body, nullptr, false);
  if (res->status != 200 || j.is_discarded() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
      !j["data"][0].contains("id") || !j["data"][0]["id"].is_string()) {
    *error = "GET /v1/models: HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 300);
    return "";
  }
  return j["data"][0]["id"].get<std::string>();
}

bool TokenizeHttp(const OpenAiOptions& options, const std::string& text, bool add_bos, std::vector<int32_t>* ids,
                  std::string* error) {
  std::unique_ptr<httplib::Client> client = MakeClient(options, 60);
  httplib::Client& cli = *client;
  const json body = {{"content", text}, {"add_special", add_bos}};
  auto res = cli.Post("/tokenize", body.dump(), "application/json");
  if (!res) {
    *error = "POST /tokenize: " + httplib::to_string(res.error());
    return false;
  }
  const json j = json::parse(res->body, nullptr, false);
  if (res->status != 200 || j.is_discarded() || !j.contains("tokens") || !j["tokens"].is_array()) {
    *error = "POST /tokenize: HTTP " + std::to_string(res->status) +
             " (the server has no llama.cpp-style /tokenize; pass --prompt-ids, e.g. made with "
             "--save-prompts --prompts-only against asl-server's gRPC port)";
    return false;
  }
  ids->clear();
  for (const json& t : j["tokens"]) {
    if (!t.is_number_integer()) {
      *error = "POST /tokenize: a token is not an integer: " + t.dump();
      return false;
    }
    ids->push_back(t.get<int32_t>());
  }
  return true;
}

}  // namespace asl::loadtest
