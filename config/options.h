// The table of configuration keys (internal to asl_config): one entry per YAML key / flag, with
// its type, meaning, range check and accessors. server_config.h is the public interface.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "config/server_config.h"

namespace asl::config {

struct Option {
  std::string key;    // "section.name"
  std::string type;   // shown in --help: "int", "size", "float", "string", "a|b|c"
  std::string help;   // one line: meaning and range
  // Parses `value` and stores it; the error message does not include the key (the caller adds it).
  std::function<Status(const std::string& value, ServerConfig* config)> set;
  std::function<std::string(const ServerConfig& config)> get;
};

// Every option, in documentation order (the order of config/default.yaml).
const std::vector<Option>& Options();
// nullptr when `key` is not a key.
const Option* FindOption(const std::string& key);
// True when some key starts with `section` + ".".
bool IsSection(const std::string& section);

}  // namespace asl::config
