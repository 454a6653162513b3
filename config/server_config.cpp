// YAML files, command-line flags, cross-key checks, --help and the config dump.
#include "config/server_config.h"

#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "config/options.h"

namespace asl::config {
namespace {

Status KeyError(const std::string& origin, const std::string& key, const std::string& why) {
  return InvalidArgument(origin + ": " + key + ": " + why);
}

std::string Where(const YAML::Node& node) {
  const YAML::Mark m = node.Mark();
  if (m.line < 0) return "";
  return " (line " + std::to_string(m.line + 1) + ")";
}

Status ApplyNode(const YAML::Node& node, const std::string& prefix, const std::string& origin, ServerConfig* config) {
  if (!node.IsMap()) {
    return KeyError(origin, prefix.empty() ? "<document>" : prefix, "expected a mapping of keys" + Where(node));
  }
  for (const auto& kv : node) {
    const std::string name = kv.first.as<std::string>();
    const std::string key = prefix.empty() ? name : prefix + "." + name;
    const YAML::Node& value = kv.second;
    if (IsSection(key)) {
      if (value.IsNull()) continue;  // an empty section keeps its defaults
      ASL_RETURN_IF_ERROR(ApplyNode(value, key, origin, config));
      continue;
    }
    const Option* opt = FindOption(key);
    if (opt == nullptr) return KeyError(origin, key, "unknown key" + Where(kv.first) + " (see --help)");
    if (!value.IsScalar()) {
      return KeyError(origin, key, "expected a single " + opt->type + " value" + Where(value));
    }
    Status st = opt->set(value.Scalar(), config);
    if (!st.ok()) return KeyError(origin, key, st.message() + Where(value));
  }
  return Status::Ok();
}

}  // namespace

Status ApplyYamlString(const std::string& yaml, const std::string& origin, ServerConfig* config) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return InvalidArgument(origin + ": not valid YAML: " + e.what());
  }
  if (root.IsNull()) return Status::Ok();  // an empty file changes nothing
  try {
    return ApplyNode(root, "", origin, config);
  } catch (const YAML::Exception& e) {
    return InvalidArgument(origin + ": " + e.what());
  }
}

Status ApplyYamlFile(const std::string& path, ServerConfig* config) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return NotFound("--config: cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ApplyYamlString(ss.str(), path, config);
}

Status SetConfigValue(const std::string& key, const std::string& value, ServerConfig* config) {
  const Option* opt = FindOption(key);
  if (opt == nullptr) return InvalidArgument(key + ": unknown key (see --help)");
  Status st = opt->set(value, config);
  if (!st.ok()) return InvalidArgument(key + ": " + st.message());
  return Status::Ok();
}

StatusOr<std::string> GetConfigValue(const std::string& key, const ServerConfig& config) {
  const Option* opt = FindOption(key);
  if (opt == nullptr) return InvalidArgument(key + ": unknown key (see --help)");
  return opt->get(config);
}

Status ValidateServerConfig(const ServerConfig& c) {
  const PruningParams& p = c.engine.default_pruning;
  const std::string w = std::to_string(p.window);
  if (p.kernel % 2 == 0) return InvalidArgument("pruning.kernel: must be odd, got " + std::to_string(p.kernel));
  if (p.select_k <= p.window) {
    return InvalidArgument("pruning.select_k: must be > pruning.window (" + w + "), got " + std::to_string(p.select_k));
  }
  if (p.kv_budget != 0 && p.kv_budget <= p.window) {
    return InvalidArgument("pruning.kv_budget: must be 0 or > pruning.window (" + w + "), got " +
                           std::to_string(p.kv_budget));
  }
  if (p.min_layer >= 0 && p.min_layer < p.obs_layers - 1) {
    return InvalidArgument("pruning.min_layer: must be -1 or >= pruning.obs_layers - 1 (" +
                           std::to_string(p.obs_layers - 1) + "), got " + std::to_string(p.min_layer));
  }
  if (p.max_layer >= 0 && p.min_layer >= 0 && p.max_layer <= p.min_layer) {
    return InvalidArgument("pruning.max_layer: must be -1 or > pruning.min_layer (" + std::to_string(p.min_layer) +
                           "), got " + std::to_string(p.max_layer));
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    return InvalidArgument(std::string(c.tls_cert_file.empty() ? "server.tls_cert_file" : "server.tls_key_file") +
                           ": TLS needs both server.tls_cert_file and server.tls_key_file");
  }
  if (!c.tls_client_ca_file.empty() && c.tls_cert_file.empty()) {
    return InvalidArgument("server.tls_client_ca_file: mutual TLS needs server.tls_cert_file and server.tls_key_file");
  }
  if (c.metrics_port != 0 && c.metrics_port == c.grpc_port) {
    return InvalidArgument("server.metrics_port: must differ from server.grpc_port (" + std::to_string(c.grpc_port) +
                           ")");
  }
  if (c.engine.max_model_len > 0 && c.max_prompt_tokens >= c.engine.max_model_len) {
    return InvalidArgument("server.max_prompt_tokens: must be < scheduler.max_model_len (" +
                           std::to_string(c.engine.max_model_len) + ") so that one token can be generated, got " +
                           std::to_string(c.max_prompt_tokens));
  }
  return Status::Ok();
}

std::string EnvVarForKey(const std::string& key) {
  std::string name = "ASL_SERVER_";
  for (char c : key) name += c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

StatusOr<ParsedArgs> ParseServerArgs(const std::vector<std::string>& args) {
  return ParseServerArgs(args, [](const char* name) -> const char* { return std::getenv(name); });
}

StatusOr<ParsedArgs> ParseServerArgs(const std::vector<std::string>& args, const EnvLookup& env) {
  ParsedArgs out;
  // An environment variable set to a non-empty value, else nullptr.
  auto env_value = [&env](const std::string& name) -> const char* {
    const char* v = env ? env(name.c_str()) : nullptr;
    return v != nullptr && *v != '\0' ? v : nullptr;
  };
  // Split into (flag, value) pairs first so that --config applies before every other flag.
  struct Flag {
    std::string name;
    std::string value;
  };
  std::vector<Flag> flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      out.help = true;
      continue;
    }
    if (a == "--version") {
      out.version = true;
      continue;
    }
    if (a.rfind("--", 0) != 0 || a.size() == 2) {
      return InvalidArgument("unexpected argument '" + a + "': flags are --key=value or --key value (see --help)");
    }
    const size_t eq = a.find('=');
    Flag f;
    if (eq != std::string::npos) {
      f.name = a.substr(2, eq - 2);
      f.value = a.substr(eq + 1);
    } else {
      f.name = a.substr(2);
      if (f.name != "config" && FindOption(f.name) == nullptr) {
        return InvalidArgument("--" + f.name + ": unknown flag (see --help)");
      }
      if (i + 1 >= args.size()) return InvalidArgument("--" + f.name + ": missing value");
      f.value = args[++i];
    }
    if (f.name != "config" && FindOption(f.name) == nullptr) {
      return InvalidArgument("--" + f.name + ": unknown flag (see --help)");
    }
    flags.push_back(std::move(f));
  }
  if (out.help || out.version) return out;
  for (const Flag& f : flags) {
    if (f.name != "config") continue;
    if (!out.config.config_file.empty()) return InvalidArgument("--config: given more than once");
    ASL_RETURN_IF_ERROR(ApplyYamlFile(f.value, &out.config));
    out.config.config_file = f.value;
  }
  if (out.config.config_file.empty()) {
    if (const char* path = env_value("ASL_SERVER_CONFIG")) {
      Status st = ApplyYamlFile(path, &out.config);
      if (!st.ok()) return InvalidArgument("ASL_SERVER_CONFIG: " + st.message());
      out.config.config_file = path;
    }
  }
  // Environment variables: above the file, below the flags.
  for (const Option& o : Options()) {
    const std::string name = EnvVarForKey(o.key);
    const char* value = env_value(name);
    if (value == nullptr) continue;
    Status st = o.set(value, &out.config);
    if (!st.ok()) return InvalidArgument(name + " (" + o.key + "): " + st.message());
  }
  for (const Flag& f : flags) {
    if (f.name == "config") continue;
    Status st = FindOption(f.name)->set(f.value, &out.config);
    if (!st.ok()) return InvalidArgument("--" + f.name + ": " + st.message());
  }
  ASL_RETURN_IF_ERROR(ValidateServerConfig(out.config));
  return out;
}

std::vector<std::string> ServerConfigKeys() {
  std::vector<std::string> keys;
  for (const Option& o : Options()) keys.push_back(o.key);
  return keys;
}

std::string ServerHelpText(const std::string& program) {
  const ServerConfig defaults;
  std::ostringstream out;
  out << "Usage: " << program << " [--config FILE] [--section.key=value | --section.key value]...\n\n"
      << "Serves a model over gRPC (asl.v1.Generation, grpc.health.v1.Health) with Prometheus metrics.\n"
      << "Precedence: built-in defaults < the YAML file given with --config < environment variables < flags.\n"
      << "Every key of the YAML file is a flag and an environment variable ASL_SERVER_<KEY>: the key in\n"
      << "capitals, '.' as '_' (kv_cache.bytes: ASL_SERVER_KV_CACHE_BYTES); empty variables are unset.\n"
      << "Sizes take K/M/G/T or KiB/MiB/GiB/TiB (powers of 1024) or KB/MB/GB/TB (powers of 1000).\n\n"
      << "  --config FILE (env ASL_SERVER_CONFIG)\n"
      << "      YAML file with the keys below, nested by section (see config/default.yaml)\n"
      << "  --help, -h\n      this text\n"
      << "  --version\n      print the version and git commit, then exit\n\n"
      << "API keys: server.api_key_file and/or " << kApiKeysEnvVar << " (keys separated by commas).\n\n"
      << "Keys (type, default):\n";
  std::string section;
  for (const Option& o : Options()) {
    const std::string s = o.key.substr(0, o.key.find('.'));
    if (s != section) {
      section = s;
      out << "\n";
    }
    out << "  --" << o.key << " (" << o.type << ", default " << o.get(defaults) << ") [env " << EnvVarForKey(o.key)
        << "]\n      " << o.help << "\n";
  }
  return out.str();
}

std::string DumpServerConfig(const ServerConfig& config) {
  std::ostringstream out;
  std::string section;
  for (const Option& o : Options()) {
    const size_t dot = o.key.find('.');
    const std::string s = o.key.substr(0, dot);
    if (s != section) {
      section = s;
      out << s << ":\n";
    }
    YAML::Emitter e;
    e << o.get(config);
    out << "  " << o.key.substr(dot + 1) << ": " << e.c_str() << "\n";
  }
  return out.str();
}

}  // namespace asl::config
