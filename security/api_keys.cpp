#include "security/api_keys.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace asl::security {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

void AddUnique(std::string key, std::vector<std::string>* keys) {
  for (const std::string& k : *keys) {
    if (k == key) return;
  }
  keys->push_back(std::move(key));
}

}  // namespace

bool ReadTextFile(const std::string& path, std::string* out, std::string* error) {
  errno = 0;
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    *error = path + ": cannot read: " + (errno != 0 ? std::strerror(errno) : "cannot open");
    return false;
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) {
    *error = path + ": read error";
    return false;
  }
  *out = ss.str();
  return true;
}

std::vector<std::string> SplitKeys(std::string_view text, bool lines) {
  std::vector<std::string> keys;
  size_t i = 0;
  while (i <= text.size()) {
    size_t end = i;
    if (lines) {
      while (end < text.size() && text[end] != '\n') ++end;
    } else {
      while (end < text.size() && text[end] != ',' && !IsSpace(text[end])) ++end;
    }
    const std::string_view item = Trim(text.substr(i, end - i));
    if (!item.empty() && !(lines && item.front() == '#')) AddUnique(std::string(item), &keys);
    i = end + 1;
  }
  return keys;
}

bool LoadApiKeys(const std::string& file, const std::string& env_var, std::vector<std::string>* keys,
                 std::string* error) {
  keys->clear();
  if (!file.empty()) {
    std::string text;
    if (!ReadTextFile(file, &text, error)) return false;
    std::vector<std::string> from_file = SplitKeys(text, /*lines=*/true);
    if (from_file.empty()) {
      *error = file + ": no API key in the file (one key per line)";
      return false;
    }
    for (std::string& k : from_file) AddUnique(std::move(k), keys);
  }
  if (!env_var.empty()) {
    const char* value = std::getenv(env_var.c_str());
    if (value != nullptr && *value != '\0') {
      std::vector<std::string> from_env = SplitKeys(value, /*lines=*/false);
      if (from_env.empty()) {
        *error = env_var + ": set but holds no API key";
        return false;
      }
      for (std::string& k : from_env) AddUnique(std::move(k), keys);
    }
  }
  return true;
}

ApiKeySet::ApiKeySet(std::vector<std::string> keys) : keys_(std::move(keys)) {}

bool ApiKeySet::CheckKey(std::string_view key) const {
  // Every key is compared in full, byte by byte, so the time says nothing about the keys' contents.
  bool match = false;
  for (const std::string& k : keys_) {
    unsigned diff = static_cast<unsigned>(k.size() ^ key.size());
    for (size_t i = 0; i < key.size(); ++i) {
      const char want = k.empty() ? '\0' : k[i % k.size()];
      diff |= static_cast<unsigned char>(want ^ key[i]);
    }
    match |= diff == 0 && !key.empty();
  }
  return match;
}

std::string_view BearerToken(std::string_view v) {
  v = Trim(v);
  constexpr std::string_view kScheme = "bearer";
  if (v.size() <= kScheme.size() || !IsSpace(v[kScheme.size()])) return {};
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (static_cast<char>(v[i] | 0x20) != kScheme[i]) return {};
  }
  return Trim(v.substr(kScheme.size()));
}

bool ApiKeySet::CheckAuthorization(std::string_view header_value) const {
  if (!enabled()) return true;
  const std::string_view token = BearerToken(header_value);
  return !token.empty() && CheckKey(token);
}

}  // namespace asl::security
