#include "server/gateway/connection_watch.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdlib>
#include <string>

namespace asl::gateway {
namespace {

// "addr", port of a socket address (IPv4 or IPv6), as httplib writes them into Request.
bool Endpoint(const sockaddr_storage& a, std::string* addr, int* port) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
    if (!inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf))) return false;
    *port = ntohs(in->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a);
    if (!inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof(buf))) return false;
    *port = ntohs(in6->sin6_port);
  } else {
    return false;
  }
  *addr = buf;
  return true;
}

bool Matches(int fd, const httplib::Request& req) {
  sockaddr_storage local{}, peer{};
  socklen_t ll = sizeof(local), pl = sizeof(peer);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0) return false;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) return false;
  std::string la, pa;
  int lp = -1, pp = -1;
  return Endpoint(local, &la, &lp) && Endpoint(peer, &pa, &pp) && lp == req.local_port &&
         pp == req.remote_port && la == req.local_addr && pa == req.remote_addr;
}

// The socket of the connection `req` came in on, or -1 when it cannot be found.
int FindConnectionSocket(const httplib::Request& req) {
  if (req.remote_port < 0 || req.local_port < 0) return -1;
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  const int own = dirfd(dir);
  while (dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == own) continue;
    if (Matches(static_cast<int>(fd), req)) {
      found = static_cast<int>(fd);
      break;
    }
  }
  closedir(dir);
  return found;
}

}  // namespace

ConnectionWatch::ConnectionWatch(const httplib::Request& req, std::function<void()> on_gone) {
  const int fd = FindConnectionSocket(req);
  if (fd >= 0) thread_ = std::thread([this, fd, cb = std::move(on_gone)]() mutable { Run(fd, std::move(cb)); });
}

ConnectionWatch::~ConnectionWatch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ConnectionWatch::Run(int fd, std::function<void()> on_gone) {
  while (true) {
    // POLLRDHUP only: a pipelined next request (POLLIN) must not wake this loop; POLLHUP and
    // POLLERR are always reported.
    pollfd p{fd, POLLRDHUP, 0};
    const int n = poll(&p, 1, /*timeout ms=*/0);
    if (n > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) {
      gone_ = true;
      on_gone();
      return;
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stop_; })) return;
  }
}

}  // namespace asl::gateway
