// API keys of asl-server (gRPC metadata `authorization: Bearer KEY`) and asl-gateway (HTTP header
// `Authorization: Bearer KEY`): where they come from and how a presented key is checked.
//
// Sources: a file with one key per line (blank lines and lines starting with '#' skipped, spaces
// around a key dropped), and/or an environment variable holding one or more keys separated by
// commas, spaces or newlines. Keys are never command-line values (they would show in `ps`).
// Standard library only (asl_security links gRPC for grpc_security.h; this part needs none of it).
//
// Threads: an ApiKeySet is immutable after construction; Check* are safe from any thread.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace asl::security {

// Reads a whole file. On failure returns false and *error names the file and why.
[[nodiscard]] bool ReadTextFile(const std::string& path, std::string* out, std::string* error);

// The keys of `file` (may be empty: none) and of the environment variable `env_var` (unset or
// empty: none), in that order, duplicates dropped. False with *error naming the file when it
// cannot be read or holds no key, or naming the variable when it holds only separators.
[[nodiscard]] bool LoadApiKeys(const std::string& file, const std::string& env_var, std::vector<std::string>* keys,
                               std::string* error);

// Keys split out of a text by the rules above (`lines`: the file format, else the variable's).
std::vector<std::string> SplitKeys(std::string_view text, bool lines);

class ApiKeySet {
 public:
  ApiKeySet() = default;
  explicit ApiKeySet(std::vector<std::string> keys);

  // No keys: authentication is off and every check passes.
  bool enabled() const { return !keys_.empty(); }
  size_t size() const { return keys_.size(); }
  // `key` is one of the keys. Compares against every key in time independent of where they differ.
  bool CheckKey(std::string_view key) const;
  // An Authorization value "Bearer KEY" (scheme case-insensitive, one or more spaces) with a valid
  // key. True whenever !enabled().
  bool CheckAuthorization(std::string_view header_value) const;

 private:
  std::vector<std::string> keys_;
};

// "Bearer KEY" -> "KEY"; empty when the value is not a bearer credential.
std::string_view BearerToken(std::string_view header_value);

}  // namespace asl::security
