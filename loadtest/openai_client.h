// The OpenAI-HTTP mode of asl-loadtest: one streaming POST /v1/completions per request against any
// OpenAI-compatible server (asl-gateway, llama.cpp's llama-server), measured on the client exactly
// as the gRPC mode measures Generate streams (see stats.h for the conventions).
//
// Token accounting: a server-sent event is token-bearing when its choice carries text (or a
// "tokens" array, counted by its length). Neither asl-gateway nor llama-server's /v1/completions
// puts token ids in a chunk, so a chunk counts as one token unless it says otherwise; when the
// server holds a token back (incomplete UTF-8, a possible stop string) the next chunk carries two
// and there is one ITL gap for both, as in the gRPC mode. The output token count of a request is
// then taken from the final `usage` (completion_tokens), so TPOT is exact either way.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "loadtest/prompts.h"
#include "loadtest/stats.h"

namespace asl::loadtest {

// "http://host:port" or "https://host:port" (a trailing "/" or "/v1" is dropped; default ports 80
// and 443). Returns false with `error` on anything else. *https tells which scheme; the overload
// without it refuses https.
[[nodiscard]] bool ParseHttpUrl(const std::string& url, std::string* host, int* port, bool* https, std::string* error);
[[nodiscard]] bool ParseHttpUrl(const std::string& url, std::string* host, int* port, std::string* error);

// Splits a byte stream into server-sent events and hands each event's `data` (the "data:" lines
// joined by "\n") to the callback. Comments (":ping") and other fields are skipped. Accepts "\n"
// and "\r\n" line ends; an event ends at an empty line.
class SseParser {
 public:
  void Feed(const char* data, size_t size, const std::function<void(const std::string& data)>& on_event);

 private:
  std::string line_;   // the current, unfinished line
  std::string data_;   // the data of the current, unfinished event
  bool has_data_ = false;
};

// What one streamed completion has shown so far; Apply() folds in one event's data.
struct StreamState {
  bool done = false;          // "[DONE]" seen
  bool finished = false;      // a choice with a finish_reason seen
  std::string error;          // an {"error": ...} event, as text
  int64_t chunks_with_tokens = 0;
  int64_t counted_tokens = 0;  // from the chunks (1 per text chunk, or len(tokens))
  bool has_usage = false;
  int64_t usage_prompt_tokens = 0;
  int64_t usage_completion_tokens = 0;
  int64_t usage_cached_tokens = 0;  // usage.prompt_tokens_details.cached_tokens (llama-server)
  nlohmann::json asl;               // asl-gateway's "asl" report (finish chunk), or null
};

// Returns the number of tokens the event carries (0: not token-bearing). Malformed JSON sets
// state->error.
int64_t ApplyEvent(const std::string& data, StreamState* state);

struct OpenAiOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string model;               // "model" of every request
  nlohmann::json body_extra;       // merged into every request body (sampling, "pruning", ...)
  double timeout_s = 600;          // read/write timeout of each request (the whole stream, per read)
  bool https = false;              // TLS (OpenSSL), the server's certificate verified
  std::string ca_file;             // https: CA certificates (PEM); empty: the system's
  std::string api_key;             // sent as "Authorization: Bearer KEY"; empty: none
};

// The body of request `index`: prompt (token ids, or text), stream, usage, plus body_extra.
[[nodiscard]] nlohmann::json CompletionBody(const OpenAiOptions& options, const Prompt& prompt, int64_t index);

// One streaming request, measured (also used for warm-up). status_code: "OK", "HTTP_<status>",
// "STREAM_ERROR" (an error event in the stream), "NO_COMPLETION" (the stream ended without a
// finish_reason) or the transport error's name ("Connection", "Read", ...).
[[nodiscard]] RequestResult RunOneOpenAi(const OpenAiOptions& options, const nlohmann::json& body,
                                         double run_start_s);

// GET /v1/models and return the first model's id ("" with `error` on failure).
[[nodiscard]] std::string FirstModelId(const OpenAiOptions& options, std::string* error);

// POST /tokenize {"content", "add_special"} -> {"tokens": [...]}, llama-server's API (asl-gateway
// has none; use --prompt-ids there). Has the signature of a Tokenizer (prompts.h).
[[nodiscard]] bool TokenizeHttp(const OpenAiOptions& options, const std::string& text, bool add_bos,
                                std::vector<int32_t>* ids, std::string* error);

}  // namespace asl::loadtest
