// The key table and the typed parsers behind it. Adding a key: one entry in Options(), one line in
// config/default.yaml (config_tests checks that the two agree).
#include "config/options.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <type_traits>
#include <variant>

namespace asl::config {
namespace {

std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::optional<int64_t> ParseInt(const std::string& text) {
  const std::string s = Trim(text);
  int64_t v = 0;
  const char* first = s.data();
  if (!s.empty() && s[0] == '+') ++first;
  auto [ptr, ec] = std::from_chars(first, s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<double> ParseDouble(const std::string& text) {
  const std::string s = Trim(text);
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::string FormatDouble(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

std::string Range(int64_t lo, int64_t hi) {
  if (hi == std::numeric_limits<int64_t>::max() || hi == std::numeric_limits<int>::max()) {
    return ">= " + std::to_string(lo);
  }
  return "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

// F: a generic lambda `[](auto* c) { return &c->member; }`, usable on const and mutable configs.
template <typename F>
Option IntOption(std::string key, std::string help, int64_t lo, int64_t hi, F field) {
  Option o{std::move(key), "int", std::move(help), nullptr, nullptr};
  o.set = [=](const std::string& value, ServerConfig* c) -> Status {
    const std::optional<int64_t> v = ParseInt(value);
    if (!v) return InvalidArgument("expected an integer, got '" + value + "'");
    if (*v < lo || *v > hi) return InvalidArgument("must be " + Range(lo, hi) + ", got " + std::to_string(*v));
    *field(c) = static_cast<std::remove_reference_t<decltype(*field(c))>>(*v);
    return Status::Ok();
  };
  o.get = [=](const ServerConfig& c) { return std::to_string(*field(&c)); };
  return o;
}

template <typename F>
Option SizeOption(std::string key, std::string help, int64_t lo, int64_t hi, F field) {
  Option o{std::move(key), "size", std::move(help), nullptr, nullptr};
  o.set = [=](const std::string& value, ServerConfig* c) -> Status {
    StatusOr<int64_t> v = ParseSize(value);
    if (!v.ok()) return v.status();
    if (*v < lo || *v > hi) {
      return InvalidArgument("must be in [" + FormatSize(lo) + ", " + FormatSize(hi) + "], got " + Trim(value));
    }
    *field(c) = *v;
    return Status::Ok();
  };
  o.get = [=](const ServerConfig& c) { return FormatSize(*field(&c)); };
  return o;
}

// Accepts values v with lo <= v <= hi, or lo < v < hi when `open` (both ends open).
template <typename F>
Option FloatOption(std::string key, std::string help, double lo, double hi, bool open, F field) {
  Option o{std::move(key), "float", std::move(help), nullptr, nullptr};
  o.set = [=](const std::string& value, ServerConfig* c) -> Status {
    const std::optional<double> v = ParseDouble(value);
    if (!v) return InvalidArgument("expected a finite number, got '" + value + "'");
    const bool ok = open ? (*v > lo && *v < hi) : (*v >= lo && *v <= hi);
    if (!ok) {
      const std::string range = open ? "in (" + FormatDouble(lo) + ", " + FormatDouble(hi) + ")"
                                     : "in [" + FormatDouble(lo) + ", " + FormatDouble(hi) + "]";
      return InvalidArgument("must be " + range + ", got " + FormatDouble(*v));
    }
    *field(c) = *v;
    return Status::Ok();
  };
  o.get = [=](const ServerConfig& c) { return FormatDouble(*field(&c)); };
  return o;
}

// A string checked by `check` (returns an error message, empty when fine).
template <typename F, typename C>
Option StringOption(std::string key, std::string type, std::string help, F field, C check) {
  Option o{std::move(key), std::move(type), std::move(help), nullptr, nullptr};
  o.set = [=](const std::string& value, ServerConfig* c) -> Status {
    const std::string v = Trim(value);
    const std::string why = check(v);
    if (!why.empty()) return InvalidArgument(why);
    *field(c) = v;
    return Status::Ok();
  };
  o.get = [=](const ServerConfig& c) { return *field(&c); };
  return o;
}

auto NonEmpty() {
  return [](const std::string& v) { return v.empty() ? std::string("must not be empty") : std::string(); };
}

auto OneOf(std::vector<std::string> allowed) {
  return [allowed](const std::string& v) {
    for (const auto& a : allowed) {
      if (v == a) return std::string();
    }
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    return "must be one of " + list + ", got '" + v + "'";
  };
}

// `pruning.<name>` of a knob of engine/common/pruning_knobs.h: numbers in [knob.min, max] (a
// double: (knob.min, max)), policy and pooling by their names.
Option PruningOption(const PruningKnob& knob) {
  const std::string key = std::string("pruning.") + knob.name;
  return std::visit(
      [&](auto member) {
        using T = KnobValueT<decltype(member)>;
        auto field = [member](auto* c) { return &(c->engine.default_pruning.*member); };
        if constexpr (std::is_same_v<T, int>) {
          return IntOption(key, knob.help, static_cast<int64_t>(knob.min), std::numeric_limits<int>::max(), field);
        } else if constexpr (std::is_same_v<T, double>) {
          return FloatOption(key, knob.help, knob.min, std::numeric_limits<double>::max(), true, field);
        } else {
          // PolicyKind or Pooling: one of its table's names.
          Option opt{key, KnobChoices(knob, "|"), knob.help, nullptr, nullptr};
          opt.set = [field, check = OneOf(TableNames(EnumTable<T>()))](const std::string& value,
                                                                        ServerConfig* c) -> Status {
            const std::string v = Trim(value);
            const std::string why = check(v);
            if (!why.empty()) return InvalidArgument(why);
            for (const auto& e : EnumTable<T>()) {
              if (v == e.name) *field(c) = e.kind;
            }
            return Status::Ok();
          };
          opt.get = [field](const ServerConfig& c) {
            return std::string(EnumTable<T>()[static_cast<size_t>(*field(&c))].name);
          };
          return opt;
        }
      },
      knob.member);
}

std::vector<Option> BuildOptions() {
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
  std::vector<Option> o;

  // model
  o.push_back(StringOption("model.path", "string",
                           "model to serve: a .gguf file or a Hugging Face safetensors directory (relative paths: "
                           "to the working directory, then to the source tree)",
                           [](auto* c) { return &c->engine.model_path; }, NonEmpty()));
  o.push_back(StringOption("model.device", "string", "compute device: cpu, cuda or cuda:N",
                           [](auto* c) { return &c->engine.device; }, [](const std::string& v) {
                             if (v == "cpu" || v == "cuda") return std::string();
                             if (v.rfind("cuda:", 0) == 0 && ParseInt(v.substr(5)) && *ParseInt(v.substr(5)) >= 0) {
                               return std::string();
                             }
                             return "must be cpu, cuda or cuda:N, got '" + v + "'";
                           }));
  o.push_back(StringOption("model.dtype", "auto|float32|bfloat16",
                           "compute dtype; auto = bfloat16 on CPUs with native bf16 dot products, else float32",
                           [](auto* c) { return &c->engine.dtype; }, OneOf({"auto", "float32", "bfloat16"})));
  o.push_back(StringOption("model.decode_activations", "int8|float32",
                           "decode projections over GGUF blocks on the CPU: int8 = activations quantised per block "
                           "of 32 and integer dot products (as llama.cpp); float32 = exact float arithmetic",
                           [](auto* c) { return &c->engine.decode_activations; }, OneOf({"int8", "float32"})));
  o.push_back(StringOption("model.chat_template", "string",
                           "override the model's chat template: chatml, llama3 or the path of a Jinja file; empty: "
                           "the model's own",
                           [](auto* c) { return &c->engine.chat_template; }, [](const std::string&) { return std::string(); }));
  o.push_back(IntOption("model.threads",
                        "intra-op CPU threads; 0 = the CPUs this process may use (affinity mask, capped by the "
                        "cgroup CPU quota rounded up), not the host's cores",
                        0, 4096, [](auto* c) { return &c->engine.num_threads; }));
  o.push_back(IntOption("model.onednn_primitive_cache",
                        "oneDNN primitives kept (the bfloat16 GEMMs compile one per shape, ~0.7 MiB each); 0 = "
                        "the default, 1024 (up to ~700 MiB); ONEDNN_PRIMITIVE_CACHE_CAPACITY and "
                        "LRU_CACHE_CAPACITY in the environment win",
                        0, 1 << 20, [](auto* c) { return &c->engine.onednn_primitive_cache; }));

  // server
  o.push_back(StringOption("server.host", "string",
                           "address the gRPC and metrics servers bind (127.0.0.1: this machine only; 0.0.0.0: all "
                           "interfaces, e.g. in a container)",
                           [](auto* c) { return &c->host; }, NonEmpty()));
  o.push_back(IntOption("server.grpc_port", "gRPC port", 1, 65535, [](auto* c) { return &c->grpc_port; }));
  o.push_back(IntOption("server.metrics_port", "Prometheus /metrics port (same host); 0 = no metrics endpoint", 0,
                        65535, [](auto* c) { return &c->metrics_port; }));
  o.push_back(IntOption("server.http_port", "asl-gateway's OpenAI-compatible HTTP port (asl-server ignores it)", 1,
                        65535, [](auto* c) { return &c->http_port; }));
  o.push_back(SizeOption("server.max_message_bytes", "largest gRPC message received or sent", 1024,
                         std::numeric_limits<int>::max(), [](auto* c) { return &c->max_message_bytes; }));
  o.push_back(IntOption("server.max_prompt_tokens",
                        "longest prompt accepted, in tokens (INVALID_ARGUMENT beyond); 0 = the context length", 0,
                        kIntMax, [](auto* c) { return &c->max_prompt_tokens; }));
  o.push_back(FloatOption("server.shutdown_grace_seconds",
                          "on SIGTERM/SIGINT, how long running requests may finish before they are aborted", 0.0,
                          86400.0, false, [](auto* c) { return &c->shutdown_grace_seconds; }));
  auto any = [](const std::string&) { return std::string(); };
  o.push_back(StringOption("server.api_key_file", "string",
                           "file of API keys, one per line, that gRPC calls must send as metadata 'authorization: "
                           "Bearer KEY' (also ASL_SERVER_API_KEYS); empty: no keys (health stays open)",
                           [](auto* c) { return &c->api_key_file; }, any));
  o.push_back(StringOption("server.tls_cert_file", "string",
                           "gRPC TLS: the server's certificate chain (PEM, with tls_key_file); empty: plaintext",
                           [](auto* c) { return &c->tls_cert_file; }, any));
  o.push_back(StringOption("server.tls_key_file", "string", "gRPC TLS: the certificate's private key (PEM)",
                           [](auto* c) { return &c->tls_key_file; }, any));
  o.push_back(StringOption("server.tls_client_ca_file", "string",
                           "gRPC mutual TLS: clients must present a certificate signed by this CA (PEM); empty: no "
                           "client certificates",
                           [](auto* c) { return &c->tls_client_ca_file; }, any));

  // kv_cache
  o.push_back(SizeOption("kv_cache.bytes", "KV pool size; 0 = kv_cache.memory_fraction of free memory", 0, kI64Max,
                         [](auto* c) { return &c->engine.kv_cache_bytes; }));
  o.push_back(FloatOption("kv_cache.memory_fraction",
                          "when kv_cache.bytes is 0: fraction of free memory (device memory on CUDA) for the pool", 0.0,
                          1.0, true, [](auto* c) { return &c->engine.kv_cache_memory_fraction; }));
  o.push_back(IntOption("kv_cache.block_size", "tokens per KV block", 1, 1024,
                        [](auto* c) { return &c->engine.block_size; }));
  o.push_back(StringOption("kv_cache.dtype", "auto|float16|bfloat16|float32",
                           "KV storage dtype; auto = bfloat16 when model.dtype is bfloat16, else float16",
                           [](auto* c) { return &c->engine.kv_dtype; },
                           OneOf({"auto", "float16", "bfloat16", "float32"})));

  // prefix_cache
  o.push_back(Option{"prefix_cache.enabled", "bool",
                     "reuse the KV of cached prompt prefixes (whole blocks, kept in free pool memory after their "
                     "request); requests may opt out",
                     nullptr, nullptr});
  o.back().set = [](const std::string& value, ServerConfig* c) -> Status {
    const std::string v = Trim(value);
    const std::string why = OneOf({"true", "false"})(v);
    if (!why.empty()) return InvalidArgument(why);
    c->engine.prefix_cache = v == "true";
    return Status::Ok();
  };
  o.back().get = [](const ServerConfig& c) { return std::string(c.engine.prefix_cache ? "true" : "false"); };
  o.push_back(FloatOption("prefix_cache.max_share", "largest share of the pool's blocks holding cached prefix KV, in (0, 1]",
                          0.0, 1.0, false, [](auto* c) { return &c->engine.prefix_cache_share; }));

  // structured_output
  o.push_back(SizeOption("structured_output.grammar_cache_bytes",
                         "memory for compiled grammars (JSON schemas, regexes, EBNF), reused by requests repeating a spec",
                         0, kI64Max, [](auto* c) { return &c->engine.grammar_cache_bytes; }));

  // scheduler
  o.push_back(IntOption("scheduler.max_num_seqs", "sequences running at once", 1, 65536,
                        [](auto* c) { return &c->engine.max_num_seqs; }));
  o.push_back(IntOption("scheduler.max_waiting", "requests waiting at once; beyond it RESOURCE_EXHAUSTED", 0, kIntMax,
                        [](auto* c) { return &c->engine.max_waiting; }));
  o.push_back(IntOption("scheduler.max_prefill_tokens", "prompt tokens admitted into one prefill batch", 1, kIntMax,
                        [](auto* c) { return &c->engine.max_prefill_tokens; }));
  o.push_back(FloatOption("scheduler.step_prefill_budget",
                          "prefill work per engine step in token-layers (whole layers, at least one, between decode "
                          "steps); 0 = each prefill in one step",
                          0.0, 1e15, false, [](auto* c) { return &c->engine.step_prefill_budget; }));
  o.push_back(IntOption("scheduler.prefill_chunk_rows",
                        "rows of the prefill batch one chunk of a layer computes: the smallest prefill slice; "
                        "0 = whole layers",
                        0, kIntMax, [](auto* c) { return &c->engine.prefill_chunk_rows; }));
  o.push_back(Option{"scheduler.admission", "reserve|optimistic",
                     "reserve: admit while every running request's prompt KV after pruning + max_tokens fits "
                     "(no preemption); optimistic: admit by prompt KV only, preempt (recompute) when decode runs out",
                     nullptr, nullptr});
  o.back().set = [](const std::string& value, ServerConfig* c) -> Status {
    const std::string v = Trim(value);
    const std::string why = OneOf({"reserve", "optimistic"})(v);
    if (!why.empty()) return InvalidArgument(why);
    c->engine.optimistic_admission = v == "optimistic";
    return Status::Ok();
  };
  o.back().get = [](const ServerConfig& c) { return std::string(c.engine.optimistic_admission ? "optimistic" : "reserve"); };
  o.push_back(IntOption("scheduler.max_model_len",
                        "limit on prompt + max_tokens; 0 = the model's context length (larger values are capped)", 0,
                        kIntMax, [](auto* c) { return &c->engine.max_model_len; }));

  // pruning (defaults for requests that leave a knob unset; docs/asl-method.md §1, §7)
  for (const PruningKnob& knob : kPruningKnobs) o.push_back(PruningOption(knob));

  // log
  o.push_back(StringOption("log.level", "trace|debug|info|warn|error|critical|off", "log level",
                           [](auto* c) { return &c->log_level; },
                           OneOf({"trace", "debug", "info", "warn", "error", "critical", "off"})));
  return o;
}

}  // namespace

const std::vector<Option>& Options() {
  static const std::vector<Option> kOptions = BuildOptions();
  return kOptions;
}

const Option* FindOption(const std::string& key) {
  for (const Option& o : Options()) {
    if (o.key == key) return &o;
  }
  return nullptr;
}

bool IsSection(const std::string& section) {
  for (const Option& o : Options()) {
    if (o.key.rfind(section + ".", 0) == 0) return true;
  }
  return false;
}

StatusOr<int64_t> ParseSize(const std::string& text) {
  const std::string s = Trim(text);
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  const std::string number = s.substr(0, i);
  std::string unit = Trim(s.substr(i));
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const std::optional<double> v = number.empty() ? std::nullopt : ParseDouble(number);
  auto bad = [&] {
    return InvalidArgument("expected a size such as 4096, 512MiB or 2G, got '" + text + "'");
  };
  if (!v) return bad();
  double mult = 0;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kib") mult = 1024.0;
  else if (unit == "m" || unit == "mib") mult = 1024.0 * 1024;
  else if (unit == "g" || unit == "gib") mult = 1024.0 * 1024 * 1024;
  else if (unit == "t" || unit == "tib") mult = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "kb") mult = 1e3;
  else if (unit == "mb") mult = 1e6;
  else if (unit == "gb") mult = 1e9;
  else if (unit == "tb") mult = 1e12;
  else return bad();
  const double bytes = *v * mult;
  if (bytes >= 9.2e18) return InvalidArgument("size too large: '" + text + "'");
  if (bytes != std::floor(bytes)) return InvalidArgument("size is not a whole number of bytes: '" + text + "'");
  return static_cast<int64_t>(bytes);
}

std::string FormatSize(int64_t bytes) {
  static const char* kUnits[] = {"TiB", "GiB", "MiB", "KiB"};
  static const int64_t kMults[] = {1LL << 40, 1LL << 30, 1LL << 20, 1LL << 10};
  if (bytes > 0) {
    for (int i = 0; i < 4; ++i) {
      if (bytes % kMults[i] == 0) return std::to_string(bytes / kMults[i]) + kUnits[i];
    }
  }
  return std::to_string(bytes);
}

}  // namespace asl::config
