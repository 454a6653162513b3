// ServerConfig: everything asl-server can be told, and how it is told. Precedence: built-in
// defaults < the YAML file given with --config < environment variables < command-line flags.
// Every key of the YAML file (config/default.yaml documents them all) is also a flag,
// `--section.key=value` or `--section.key value`, and an environment variable ASL_SERVER_ + the key
// in capitals with '.' as '_' (kv_cache.bytes: ASL_SERVER_KV_CACHE_BYTES; --config:
// ASL_SERVER_CONFIG); empty variables count as unset, other ASL_SERVER_* names are ignored.
// Unknown keys, values of the wrong type and values out of range are errors whose message names
// the key (and the variable). This is the only library that includes yaml-cpp.
//
// Thread: none of this is thread-safe; it runs once, at startup, on the main thread.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/common/status.h"
#include "engine/engine.h"

namespace asl::config {

inline constexpr const char* kDefaultModelPath = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

struct ServerConfig {
  // The server's defaults that differ from the engine library's: the default model, model.dtype
  // auto and model.decode_activations int8 (the engine library defaults to float32 for both, the
  // parity reference).
  ServerConfig() {
    engine.model_path = kDefaultModelPath;
    engine.dtype = "auto";
    engine.decode_activations = "int8";
  }

  // model.*, kv_cache.*, scheduler.* and pruning.* keys.
  EngineConfig engine;
  // server.* keys.
  std::string host = "127.0.0.1";            // address the gRPC and metrics servers bind (loopback)
  int grpc_port = 50051;                     // gRPC port, 1..65535
  int metrics_port = 9090;                   // Prometheus /metrics port; 0 = no metrics endpoint
  int http_port = 8080;                      // asl-gateway's HTTP port (read by the gateway)
  int64_t max_message_bytes = 16LL << 20;    // largest gRPC message received or sent
  int max_prompt_tokens = 0;                 // longest prompt accepted; 0 = the context length
  double shutdown_grace_seconds = 30.0;      // SIGTERM: how long running requests may finish
  std::string api_key_file;                  // keys clients must send (one per line); empty: none
  std::string tls_cert_file;                 // gRPC TLS certificate chain (PEM); empty: plaintext
  std::string tls_key_file;                  // its private key (PEM)
  std::string tls_client_ca_file;            // clients must present a certificate it signed (mTLS)
  // log.* keys.
  std::string log_level = "info";            // spdlog level name

  std::string config_file;                   // the --config file applied, empty if none
};

struct ParsedArgs {
  ServerConfig config;
  bool help = false;                         // --help / -h was given: print ServerHelpText, exit 0
  bool version = false;                      // --version was given: print the version line, exit 0
};

// Looks up an environment variable: nullptr when unset (std::getenv by default; tests pass a map).
using EnvLookup = std::function<const char*(const char* name)>;

// The environment variable of a key: "kv_cache.bytes" -> "ASL_SERVER_KV_CACHE_BYTES".
std::string EnvVarForKey(const std::string& key);
// The variable that, besides server.api_key_file, holds API keys (comma or space separated).
inline constexpr const char* kApiKeysEnvVar = "ASL_SERVER_API_KEYS";

// Parses the command line (without argv[0]): `--config PATH` (else ASL_SERVER_CONFIG) first,
// whatever its position, then the environment variables of the keys, then every other flag in
// order. The result is validated (ValidateServerConfig). On error nothing else is returned; the
// message names the flag, variable or key.
[[nodiscard]] StatusOr<ParsedArgs> ParseServerArgs(const std::vector<std::string>& args);
[[nodiscard]] StatusOr<ParsedArgs> ParseServerArgs(const std::vector<std::string>& args, const EnvLookup& env);

// Applies a YAML document (a mapping of sections to mappings of keys) on top of *config.
// `origin` names the source in errors ("config.yaml"). Keys missing from the document keep their
// value; unknown keys, sequences and null values are errors. On error *config may be partly
// updated (callers discard it).
[[nodiscard]] Status ApplyYamlString(const std::string& yaml, const std::string& origin, ServerConfig* config);
[[nodiscard]] Status ApplyYamlFile(const std::string& path, ServerConfig* config);

// Sets one key ("kv_cache.bytes") from its text form ("512MiB"), checking its type and range.
// On error *config is unchanged.
[[nodiscard]] Status SetConfigValue(const std::string& key, const std::string& value, ServerConfig* config);
// The text form of one key's value, as --help and DumpServerConfig print it.
[[nodiscard]] StatusOr<std::string> GetConfigValue(const std::string& key, const ServerConfig& config);

// Checks the constraints between keys (pruning.select_k > pruning.window, ...). Constraints that
// need the model's depth (pruning.min_layer < layers) are checked when the engine starts.
[[nodiscard]] Status ValidateServerConfig(const ServerConfig& config);

// Every key, in documentation order.
std::vector<std::string> ServerConfigKeys();
// --help text: usage, precedence, then every key with its type, default and meaning.
std::string ServerHelpText(const std::string& program);
// The whole configuration as YAML (for the startup log and `--help`-style dumps).
std::string DumpServerConfig(const ServerConfig& config);

// "4096", "512MiB", "1.5G", "2GB": K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB
// powers of 1000, B or nothing bytes. Case-insensitive. Negative, fractional-byte or overflowing
// sizes are errors.
[[nodiscard]] StatusOr<int64_t> ParseSize(const std::string& text);
// The shortest exact form: "16MiB", "1000", "0".
std::string FormatSize(int64_t bytes);

}  // namespace asl::config
