// asl-server: parses the configuration, starts listening, loads the model, serves until SIGTERM or
// SIGINT, then drains and exits 0. A second signal during the drain exits at once (status 1).
// Bad arguments, an unreadable API key file or TLS file: exit 2 with a message naming it.
#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "config/server_config.h"
#include "engine/common/log_sink.h"
#include "server/server.h"
#include "version/version.h"

namespace {

// SIGTERM/SIGINT handling with a self-pipe: the handler only write()s the signal number
// (async-signal-safe) and the main thread reads it. Blocking the signals and sigwait()ing is not
// enough here: libraries loaded before main() start threads that do not block them, and a signal
// delivered to one of those would kill the process without a drain.
int g_signal_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  const unsigned char c = static_cast<unsigned char>(sig);
  (void)!::write(g_signal_pipe[1], &c, 1);
}

bool InstallSignalHandlers() {
  if (::pipe2(g_signal_pipe, O_CLOEXEC) != 0) return false;
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  return ::sigaction(SIGTERM, &sa, nullptr) == 0 && ::sigaction(SIGINT, &sa, nullptr) == 0 &&
         ::signal(SIGPIPE, SIG_IGN) != SIG_ERR;
}

// Blocks until a signal arrives (or one arrived earlier, e.g. while the model loaded).
int WaitForSignal() {
  unsigned char c = 0;
  while (true) {
    const ssize_t n = ::read(g_signal_pipe[0], &c, 1);
    if (n == 1) return c;
    if (n < 0 && errno == EINTR) continue;
    return SIGTERM;  // the pipe broke: treat as a stop request
  }
}

// jemalloc's control call where it is linked (server/CMakeLists.txt); null under glibc's malloc.
extern "C" int mallctl(const char* name, void* oldp, size_t* oldlenp, void* newp, size_t newlen) __attribute__((weak));

std::string AllocatorName() {
  const char* version = nullptr;
  size_t n = sizeof version;
  if (mallctl != nullptr && mallctl("version", &version, &n, nullptr, 0) == 0 && version != nullptr) {
    return std::string("jemalloc ") + version;
  }
  return "glibc malloc";
}

}  // namespace

int main(int argc, char** argv) {
  using namespace asl;
  const std::vector<std::string> args(argv + 1, argv + argc);
  StatusOr<config::ParsedArgs> parsed = config::ParseServerArgs(args);
  if (!parsed.ok()) {
    std::fprintf(stderr, "asl-server: %s\n", parsed.status().message().c_str());
    return 2;
  }
  if (parsed->help) {
    std::fputs(config::ServerHelpText("asl-server").c_str(), stdout);
    return 0;
  }
  if (parsed->version) {
    std::printf("%s\n", VersionLine("asl-server").c_str());
    return 0;
  }
  const config::ServerConfig& cfg = parsed->config;
  (void)SetLogLevel(cfg.log_level);  // validated by the config
  // API keys and TLS files: read now, so that a bad path stops the server before anything starts.
  StatusOr<server::ServerSecurity> security = server::LoadServerSecurity(cfg);
  if (!security.ok()) {
    std::fprintf(stderr, "asl-server: %s\n", security.status().message().c_str());
    return 2;
  }

  if (!InstallSignalHandlers()) {
    std::fprintf(stderr, "asl-server: cannot install signal handlers: %s\n", std::strerror(errno));
    return 1;
  }

  spdlog::info("{} starting{} (allocator: {})", VersionLine("asl-server"),
               cfg.config_file.empty() ? "" : " with " + cfg.config_file, AllocatorName());
  spdlog::debug("configuration:\n{}", config::DumpServerConfig(cfg));
  server::AslServer server(cfg, std::move(security).value());
  if (Status st = server.Start(); !st.ok()) {
    spdlog::critical("{}", st.message());
    return 1;
  }
  if (Status st = server.LoadModel(); !st.ok()) {
    spdlog::critical("cannot load the model: {}", st.message());
    server.Shutdown();
    return 1;
  }
  const int sig = WaitForSignal();
  spdlog::info("signal {} received: draining (a second signal exits at once)", sig);
  std::thread([] {
    const int again = WaitForSignal();
    std::fprintf(stderr, "asl-server: second signal %d during shutdown: exiting now\n", again);
    std::_Exit(1);
  }).detach();
  server.Shutdown();
  return 0;
}
