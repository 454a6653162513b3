// asl-server: parses the configuration, starts listening, loads the model, serves until SIGTERM or
// SIGINT, then drains and exits 0. A second signal during the drain exits at once (status 1).
#include <signal.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config/server_config.h"
#include "engine/common/log_sink.h"
#include "server/server.h"

namespace {

// Signals are blocked in every thread (the mask is inherited by gRPC's, libtorch's and the
// Exposer's threads) and taken by this one thread with sigwait: no async-signal-safety concerns.
class SignalWaiter {
 public:
  explicit SignalWaiter(const sigset_t& set) : set_(set) {
    std::thread([this] { Run(); }).detach();
  }
  int Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return signal_ != 0; });
    return signal_;
  }

 private:
  void Run() {
    int sig = 0;
    sigwait(&set_, &sig);
    {
      std::lock_guard<std::mutex> lock(mu_);
      signal_ = sig;
    }
    cv_.notify_all();
    sigwait(&set_, &sig);
    std::fprintf(stderr, "asl-server: second signal %d during shutdown: exiting now\n", sig);
    std::_Exit(1);
  }

  sigset_t set_;
  std::mutex mu_;
  std::condition_variable cv_;
  int signal_ = 0;
};

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
  const config::ServerConfig& cfg = parsed->config;
  (void)SetLogLevel(cfg.log_level);  // validated by the config

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  SignalWaiter signals(set);

  spdlog::info("asl-server starting{}", cfg.config_file.empty() ? "" : " with " + cfg.config_file);
  spdlog::debug("configuration:\n{}", config::DumpServerConfig(cfg));
  server::AslServer server(cfg);
  if (Status st = server.Start(); !st.ok()) {
    spdlog::critical("{}", st.message());
    return 1;
  }
  if (Status st = server.LoadModel(); !st.ok()) {
    spdlog::critical("cannot load the model: {}", st.message());
    server.Shutdown();
    return 1;
  }
  const int sig = signals.Wait();
  spdlog::info("signal {} received: draining", sig);
  server.Shutdown();
  return 0;
}
