// asl_config: defaults, the YAML file, flag overrides and precedence, and the errors (unknown key,
// bad type, bad range), each naming the key.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "config/server_config.h"

namespace asl::config {
namespace {

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path) << text;
  return path;
}

// No environment: the tests' own process environment must not leak in.
StatusOr<ParsedArgs> Parse(std::vector<std::string> args) {
  return ParseServerArgs(args, [](const char*) -> const char* { return nullptr; });
}

StatusOr<ParsedArgs> ParseWithEnv(std::vector<std::string> args, std::map<std::string, std::string> env) {
  return ParseServerArgs(args, [env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

// Expects an INVALID_ARGUMENT whose message contains every one of `needles`.
void ExpectError(const Status& st, std::vector<std::string> needles) {
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  for (const auto& n : needles) EXPECT_NE(st.message().find(n), std::string::npos) << st.message() << " lacks " << n;
}

TEST(ServerConfig, BuiltInDefaults) {
  StatusOr<ParsedArgs> r = Parse({});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const ServerConfig& c = r->config;
  EXPECT_FALSE(r->help);
  EXPECT_EQ(c.engine.model_path, "models/SmolLM2-135M-Instruct.Q4_1.gguf");
  EXPECT_EQ(c.engine.device, "cpu");
  EXPECT_EQ(c.engine.dtype, "auto");
  EXPECT_EQ(c.engine.num_threads, 0);
  EXPECT_EQ(c.host, "127.0.0.1");  // loopback unless told otherwise
  EXPECT_TRUE(c.api_key_file.empty() && c.tls_cert_file.empty() && c.tls_key_file.empty() &&
              c.tls_client_ca_file.empty());
  EXPECT_EQ(c.grpc_port, 50051);
  EXPECT_EQ(c.metrics_port, 9090);
  EXPECT_EQ(c.http_port, 8080);
  EXPECT_EQ(c.max_message_bytes, 16 << 20);
  EXPECT_EQ(c.max_prompt_tokens, 0);
  EXPECT_DOUBLE_EQ(c.shutdown_grace_seconds, 30.0);
  EXPECT_EQ(c.engine.kv_cache_bytes, 0);
  EXPECT_DOUBLE_EQ(c.engine.kv_cache_memory_fraction, 0.25);
  EXPECT_EQ(c.engine.block_size, 16);
  EXPECT_EQ(c.engine.kv_dtype, "auto");
  EXPECT_EQ(c.engine.decode_activations, "int8");
  EXPECT_EQ(c.engine.max_num_seqs, 64);
  EXPECT_EQ(c.engine.max_waiting, 256);
  EXPECT_EQ(c.engine.max_prefill_tokens, 8192);
  EXPECT_FALSE(c.engine.optimistic_admission);
  EXPECT_EQ(c.engine.max_model_len, 0);
  const PruningParams& p = c.engine.default_pruning;
  EXPECT_EQ(p.policy, PolicyKind::kFull);
  EXPECT_EQ(p.window, 32);
  EXPECT_EQ(p.kernel, 7);
  EXPECT_EQ(p.pooling, Pooling::kAvg);
  EXPECT_EQ(p.min_layer, -1);
  EXPECT_EQ(p.obs_layers, 8);
  EXPECT_DOUBLE_EQ(p.tau, 0.3);
  EXPECT_EQ(p.select_k, 2048);
  EXPECT_EQ(p.kv_budget, 2048);
  EXPECT_EQ(p.max_layer, -1);
  EXPECT_EQ(p.select_layer, -1);
  EXPECT_EQ(c.log_level, "info");
  EXPECT_TRUE(c.config_file.empty());
}

// config/default.yaml documents every key with its built-in default: loading it changes nothing,
// and it names every key.
TEST(ServerConfig, DefaultYamlMatchesBuiltInDefaults) {
  ServerConfig from_file;
  ASSERT_TRUE(ApplyYamlFile(ASL_DEFAULT_CONFIG, &from_file).ok());
  EXPECT_EQ(DumpServerConfig(from_file), DumpServerConfig(ServerConfig()));
  std::ifstream f(ASL_DEFAULT_CONFIG);
  const std::string text((std::istreambuf_iterator<char>(f)), {});
  for (const std::string& key : ServerConfigKeys()) {
    const std::string leaf = key.substr(key.find('.') + 1);
    EXPECT_NE(text.find("  " + leaf + ":"), std::string::npos) << "default.yaml lacks " << key;
  }
}

// Every knob of engine/common/pruning_knobs.h is the key pruning.<name>, in the table's order, and
// a value other than its default reaches that PruningParams member by flag and by YAML.
TEST(ServerConfig, EveryPruningKnobIsAKey) {
  std::vector<std::string> pruning_keys;
  for (const std::string& key : ServerConfigKeys()) {
    if (key.rfind("pruning.", 0) == 0) pruning_keys.push_back(key);
  }
  ASSERT_EQ(pruning_keys.size(), std::size(kPruningKnobs));
  for (size_t i = 0; i < std::size(kPruningKnobs); ++i) {
    const PruningKnob& knob = kPruningKnobs[i];
    const std::string key = std::string("pruning.") + knob.name;
    SCOPED_TRACE(key);
    EXPECT_EQ(pruning_keys[i], key);
    // Text and value of a non-default setting.
    std::string text;
    PruningParams want;
    std::visit(
        [&](auto member) {
          using T = KnobValueT<decltype(member)>;
          if constexpr (std::is_same_v<T, int>) {
            want.*member += 4;
            text = std::to_string(want.*member);
          } else if constexpr (std::is_same_v<T, double>) {
            want.*member = 0.75;
            text = "0.75";
          } else {
            want.*member = EnumTable<T>()[std::size(EnumTable<T>()) - 1].kind;
            text = EnumTable<T>()[std::size(EnumTable<T>()) - 1].name;
          }
        },
        knob.member);
    ServerConfig by_flag;
    ASSERT_TRUE(SetConfigValue(key, text, &by_flag).ok());
    ServerConfig by_yaml;
    ASSERT_TRUE(ApplyYamlString(std::string("pruning:\n  ") + knob.name + ": " + text + "\n", "t.yaml", &by_yaml).ok());
    for (const ServerConfig* c : {&by_flag, &by_yaml}) {
      std::visit([&](auto member) { EXPECT_EQ(c->engine.default_pruning.*member, want.*member); }, knob.member);
      EXPECT_EQ(*GetConfigValue(key, *c), text);
    }
  }
  const std::string help = ServerHelpText("asl-server");
  EXPECT_NE(help.find("--pruning.pooling (avg|max, default avg)"), std::string::npos) << help;
  EXPECT_NE(help.find("--pruning.select_k (int, default 2048)"), std::string::npos) << help;
  EXPECT_NE(help.find("--pruning.tau (float, default 0.3)"), std::string::npos) << help;
  ExpectError(Parse({"--pruning.pooling=min"}).status(), {"--pruning.pooling", "must be one of avg, max, got 'min'"});
  ExpectError(Parse({"--pruning.policy=h2o"}).status(),
              {"--pruning.policy: must be one of full, snapkv, fastkv, gemfilter, asl, asl_2pass, got 'h2o'"});
}

// default.yaml's comment on pruning.policy names every policy.
TEST(ServerConfig, DefaultYamlNamesEveryPolicy) {
  std::ifstream f(ASL_DEFAULT_CONFIG);
  std::string line, comment;
  while (std::getline(f, line)) {
    if (line.find("# Policy:") != std::string::npos) comment = line;
  }
  ASSERT_FALSE(comment.empty());
  for (const PolicyInfo& p : kPolicies) {
    EXPECT_NE(comment.find(std::string(" ") + p.name), std::string::npos) << comment << " lacks " << p.name;
  }
}

TEST(ServerConfig, FileOverridesDefaults) {
  const std::string path = WriteTemp("file.yaml",
                                     "model:\n  path: /tmp/m.gguf\n  threads: 3\n"
                                     "server:\n  grpc_port: 6000\n  max_message_bytes: 4MiB\n"
                                     "kv_cache:\n  bytes: 512MiB\n"
                                     "pruning:\n  policy: asl\n  tau: 0.5\n  pooling: max\n"
                                     "log:\n  level: debug\n");
  StatusOr<ParsedArgs> r = Parse({"--config", path});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const ServerConfig& c = r->config;
  EXPECT_EQ(c.config_file, path);
  EXPECT_EQ(c.engine.model_path, "/tmp/m.gguf");
  EXPECT_EQ(c.engine.num_threads, 3);
  EXPECT_EQ(c.grpc_port, 6000);
  EXPECT_EQ(c.max_message_bytes, 4 << 20);
  EXPECT_EQ(c.engine.kv_cache_bytes, 512LL << 20);
  EXPECT_EQ(c.engine.default_pruning.policy, PolicyKind::kAsl);
  EXPECT_DOUBLE_EQ(c.engine.default_pruning.tau, 0.5);
  EXPECT_EQ(c.engine.default_pruning.pooling, Pooling::kMax);
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.metrics_port, 9090);  // untouched keys keep their default
}

TEST(ServerConfig, FlagsOverrideFileWhateverTheOrder) {
  const std::string path = WriteTemp("flags.yaml", "server:\n  grpc_port: 6000\n  metrics_port: 6001\n");
  // --config comes last on the command line but is applied first.
  StatusOr<ParsedArgs> r = Parse({"--server.grpc_port=7000", "--kv_cache.bytes", "1G", "--pruning.policy=snapkv",
                                  "--config=" + path});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->config.grpc_port, 7000);
  EXPECT_EQ(r->config.metrics_port, 6001);
  EXPECT_EQ(r->config.engine.kv_cache_bytes, 1LL << 30);
  EXPECT_EQ(r->config.engine.default_pruning.policy, PolicyKind::kSnapKv);
}

TEST(ServerConfig, EveryKeyIsAFlag) {
  const ServerConfig defaults;
  for (const std::string& key : ServerConfigKeys()) {
    StatusOr<std::string> v = GetConfigValue(key, defaults);
    ASSERT_TRUE(v.ok()) << key;
    // A key set to its own default round-trips through its text form.
    StatusOr<ParsedArgs> r = Parse({"--" + key + "=" + *v});
    ASSERT_TRUE(r.ok()) << key << ": " << r.status().ToString();
    EXPECT_EQ(DumpServerConfig(r->config), DumpServerConfig(defaults)) << key;
  }
}

TEST(ServerConfig, UnknownKeyInFileNamesIt) {
  const std::string path = WriteTemp("unknown.yaml", "model:\n  pth: x.gguf\n");
  StatusOr<ParsedArgs> r = Parse({"--config", path});
  ExpectError(r.status(), {"model.pth", "unknown key", "unknown.yaml", "line 2"});
  ExpectError(Parse({"--config", WriteTemp("unknown2.yaml", "modle:\n  path: x\n")}).status(), {"modle", "unknown"});
}

TEST(ServerConfig, UnknownFlagNamesIt) {
  ExpectError(Parse({"--model.pth=x"}).status(), {"--model.pth", "unknown"});
  ExpectError(Parse({"--bogus", "1"}).status(), {"--bogus", "unknown"});
  ExpectError(Parse({"positional"}).status(), {"positional"});
  ExpectError(Parse({"--model.threads"}).status(), {"--model.threads", "missing value"});
}

TEST(ServerConfig, BadTypeNamesTheKey) {
  ExpectError(Parse({"--model.threads=four"}).status(), {"--model.threads", "integer", "four"});
  ExpectError(Parse({"--pruning.tau=high"}).status(), {"--pruning.tau", "number"});
  ExpectError(Parse({"--kv_cache.bytes=lots"}).status(), {"--kv_cache.bytes", "size"});
  ExpectError(Parse({"--model.dtype=float16"}).status(), {"--model.dtype", "float32", "bfloat16"});
  ExpectError(Parse({"--kv_cache.dtype=int8"}).status(), {"--kv_cache.dtype", "float16", "int8"});
  ExpectError(Parse({"--pruning.policy=h2o"}).status(), {"--pruning.policy", "asl_2pass", "h2o"});
  const std::string seq = WriteTemp("seq.yaml", "server:\n  grpc_port: [1, 2]\n");
  ExpectError(Parse({"--config", seq}).status(), {"server.grpc_port", "single int"});
  const std::string map = WriteTemp("map.yaml", "model: cpu\n");
  ExpectError(Parse({"--config", map}).status(), {"model", "mapping"});
  const std::string yaml = WriteTemp("broken.yaml", "model:\n  path: [unclosed\n");
  ExpectError(Parse({"--config", yaml}).status(), {"broken.yaml", "YAML"});
  const std::string typed = WriteTemp("typed.yaml", "scheduler:\n  max_num_seqs: 1.5\n");
  ExpectError(Parse({"--config", typed}).status(), {"scheduler.max_num_seqs", "integer", "line 2"});
}

TEST(ServerConfig, OutOfRangeNamesTheKey) {
  ExpectError(Parse({"--server.grpc_port=70000"}).status(), {"--server.grpc_port", "[1, 65535]", "70000"});
  ExpectError(Parse({"--scheduler.max_num_seqs=0"}).status(), {"--scheduler.max_num_seqs", "0"});
  ExpectError(Parse({"--kv_cache.memory_fraction=1.5"}).status(), {"--kv_cache.memory_fraction", "(0, 1)"});
  ExpectError(Parse({"--kv_cache.block_size=0"}).status(), {"--kv_cache.block_size"});
  ExpectError(Parse({"--pruning.tau=0"}).status(), {"--pruning.tau"});
  ExpectError(Parse({"--pruning.window=0"}).status(), {"--pruning.window"});
  ExpectError(Parse({"--server.max_message_bytes=10"}).status(), {"--server.max_message_bytes"});
  ExpectError(Parse({"--model.device=tpu"}).status(), {"--model.device", "tpu"});
  ExpectError(Parse({"--scheduler.admission=greedy"}).status(), {"--scheduler.admission", "greedy"});
  auto optimistic = Parse({"--scheduler.admission=optimistic"});
  ASSERT_TRUE(optimistic.ok()) << optimistic.status().ToString();
  EXPECT_TRUE(optimistic->config.engine.optimistic_admission);
  // Constraints between keys name the key that breaks them.
  ExpectError(Parse({"--pruning.kernel=4"}).status(), {"pruning.kernel", "odd"});
  ExpectError(Parse({"--pruning.select_k=16"}).status(), {"pruning.select_k", "pruning.window"});
  ExpectError(Parse({"--pruning.kv_budget=8"}).status(), {"pruning.kv_budget"});
  ExpectError(Parse({"--pruning.min_layer=2"}).status(), {"pruning.min_layer", "obs_layers"});
  ExpectError(Parse({"--pruning.min_layer=10", "--pruning.max_layer=5"}).status(), {"pruning.max_layer"});
  ExpectError(Parse({"--server.metrics_port=50051"}).status(), {"server.metrics_port"});
  const std::string path = WriteTemp("range.yaml", "kv_cache:\n  block_size: 4096\n");
  ExpectError(Parse({"--config", path}).status(), {"kv_cache.block_size", "4096", "range.yaml"});
}

TEST(ServerConfig, MissingConfigFile) {
  StatusOr<ParsedArgs> r = Parse({"--config", "/nonexistent/asl.yaml"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("/nonexistent/asl.yaml"), std::string::npos);
}

TEST(ServerConfig, EmptyFileAndEmptySectionKeepDefaults) {
  StatusOr<ParsedArgs> a = Parse({"--config", WriteTemp("empty.yaml", "")});
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  StatusOr<ParsedArgs> b = Parse({"--config", WriteTemp("emptysec.yaml", "model:\n")});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(DumpServerConfig(b->config), DumpServerConfig(ServerConfig()));
}

TEST(ServerConfig, HelpListsEveryKeyWithDefault) {
  StatusOr<ParsedArgs> r = Parse({"--help"});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->help);
  const std::string help = ServerHelpText("asl-server");
  for (const std::string& key : ServerConfigKeys()) EXPECT_NE(help.find("--" + key + " ("), std::string::npos) << key;
  EXPECT_NE(help.find("--kv_cache.bytes (size, default 0)"), std::string::npos) << help;
  EXPECT_NE(help.find("--server.max_message_bytes (size, default 16MiB)"), std::string::npos);
  EXPECT_NE(help.find("--pruning.policy (full|snapkv|fastkv|gemfilter|asl|asl_2pass, default full)"),
            std::string::npos);
  EXPECT_NE(help.find("--config FILE"), std::string::npos);
}

// Precedence: defaults < file < environment < flags; every key has its variable.
TEST(ServerConfig, EnvironmentBetweenFileAndFlags) {
  const std::string path = WriteTemp("env.yaml", "server:\n  grpc_port: 6000\n  metrics_port: 6001\nlog:\n  level: warn\n");
  StatusOr<ParsedArgs> r = ParseWithEnv({"--config", path, "--server.metrics_port=7001"},
                                        {{"ASL_SERVER_SERVER_GRPC_PORT", "6500"},
                                         {"ASL_SERVER_SERVER_METRICS_PORT", "6501"},
                                         {"ASL_SERVER_KV_CACHE_BYTES", "256MiB"},
                                         {"ASL_SERVER_LOG_LEVEL", ""},  // empty: unset
                                         {"ASL_SERVER_BIN", "/not/a/key"}});  // not a key: ignored
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->config.grpc_port, 6500);              // env over file
  EXPECT_EQ(r->config.metrics_port, 7001);           // flag over env
  EXPECT_EQ(r->config.engine.kv_cache_bytes, 256LL << 20);
  EXPECT_EQ(r->config.log_level, "warn");            // file, the variable being empty
  EXPECT_EQ(EnvVarForKey("kv_cache.bytes"), "ASL_SERVER_KV_CACHE_BYTES");
  EXPECT_EQ(EnvVarForKey("server.host"), "ASL_SERVER_SERVER_HOST");
  const std::string help = ServerHelpText("asl-server");
  for (const std::string& key : ServerConfigKeys()) {
    EXPECT_NE(help.find("[env " + EnvVarForKey(key) + "]"), std::string::npos) << key;
    StatusOr<std::string> v = GetConfigValue(key, ServerConfig());
    ASSERT_TRUE(v.ok());
    if (v->empty()) continue;  // an empty variable is unset
    StatusOr<ParsedArgs> e = ParseWithEnv({}, {{EnvVarForKey(key), *v}});
    ASSERT_TRUE(e.ok()) << key << ": " << e.status().ToString();
  }
}

TEST(ServerConfig, EnvironmentErrorsNameTheVariable) {
  ExpectError(ParseWithEnv({}, {{"ASL_SERVER_SCHEDULER_MAX_NUM_SEQS", "zero"}}).status(),
              {"ASL_SERVER_SCHEDULER_MAX_NUM_SEQS", "scheduler.max_num_seqs", "integer"});
  const std::string path = WriteTemp("envcfg.yaml", "server:\n  grpc_port: 6100\n");
  StatusOr<ParsedArgs> r = ParseWithEnv({}, {{"ASL_SERVER_CONFIG", path}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->config.grpc_port, 6100);
  EXPECT_EQ(r->config.config_file, path);
  ExpectError(ParseWithEnv({}, {{"ASL_SERVER_CONFIG", "/nonexistent.yaml"}}).status(),
              {"ASL_SERVER_CONFIG", "/nonexistent.yaml"});
}

TEST(ServerConfig, VersionFlag) {
  StatusOr<ParsedArgs> r = Parse({"--version"});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->version);
}

TEST(ServerConfig, TlsNeedsCertificateAndKey) {
  ExpectError(Parse({"--server.tls_cert_file=/c.pem"}).status(), {"server.tls_key_file", "both"});
  ExpectError(Parse({"--server.tls_key_file=/k.pem"}).status(), {"server.tls_cert_file", "both"});
  ExpectError(Parse({"--server.tls_client_ca_file=/ca.pem"}).status(), {"server.tls_client_ca_file"});
  EXPECT_TRUE(Parse({"--server.tls_cert_file=/c.pem", "--server.tls_key_file=/k.pem"}).ok());
}

TEST(ParseSize, Suffixes) {
  EXPECT_EQ(*ParseSize("4096"), 4096);
  EXPECT_EQ(*ParseSize("0"), 0);
  EXPECT_EQ(*ParseSize("512MiB"), 512LL << 20);
  EXPECT_EQ(*ParseSize("512mib"), 512LL << 20);
  EXPECT_EQ(*ParseSize("1G"), 1LL << 30);
  EXPECT_EQ(*ParseSize("1.5GiB"), 3LL << 29);
  EXPECT_EQ(*ParseSize("2GB"), 2000000000LL);
  EXPECT_EQ(*ParseSize("64 KiB"), 64 << 10);
  EXPECT_EQ(*ParseSize("3k"), 3072);
  EXPECT_EQ(*ParseSize("1T"), 1LL << 40);
  EXPECT_EQ(*ParseSize("7B"), 7);
  EXPECT_FALSE(ParseSize("").ok());
  EXPECT_FALSE(ParseSize("-1").ok());
  EXPECT_FALSE(ParseSize("1.5").ok());
  EXPECT_FALSE(ParseSize("12XB").ok());
  EXPECT_FALSE(ParseSize("1..2M").ok());
  EXPECT_FALSE(ParseSize("99999999T").ok());
  EXPECT_EQ(FormatSize(16 << 20), "16MiB");
  EXPECT_EQ(FormatSize(1000), "1000");
  EXPECT_EQ(FormatSize(0), "0");
}

}  // namespace
}  // namespace asl::config
