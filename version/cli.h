// Shared command-line conventions of the CLI11-based binaries (asl-gateway, asl-loadtest, asl-cli):
// `--version` prints version/version.h's line; every long option can also be set by an
// environment variable PREFIX + the option's name in capitals with '-' as '_' (asl-gateway
// --backend: ASL_GATEWAY_BACKEND). A flag on the command line wins over its variable. Header-only
// (the binaries bring CLI11); the version text itself lives in asl_version.
#pragma once

#include <CLI/CLI.hpp>

#include <cctype>
#include <string>

#include "version/version.h"

namespace asl {

// Adds --version ("<program> <version> (git <commit>)", exit 0).
inline void AddVersionFlag(CLI::App* app, const std::string& program) {
  app->set_version_flag("--version", VersionLine(program), "Print the version and git commit, then exit");
}

// The variable of a long option name: ("ASL_GATEWAY_", "backend-api-key-file") ->
// "ASL_GATEWAY_BACKEND_API_KEY_FILE".
inline std::string EnvNameFor(const std::string& prefix, const std::string& long_name) {
  std::string name = prefix;
  for (char c : long_name) name += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

// Gives every option of `app` that has a long name (not --help / --version) its variable. Call
// after all options are added.
inline void SetEnvNames(CLI::App* app, const std::string& prefix) {
  for (CLI::Option* opt : app->get_options()) {
    if (opt->get_lnames().empty()) continue;
    const std::string& name = opt->get_lnames().front();
    if (name == "help" || name == "version" || name == "help-all") continue;
    opt->envname(EnvNameFor(prefix, name));
  }
}

}  // namespace asl
