// Notices that an HTTP client went away while a handler is blocked on the backend.
//
// A non-streamed completion writes nothing until the end, so no write error can tell that the
// client closed its connection, and the request would go on generating (and holding KV blocks) for
// nobody. cpp-httplib 0.11 gives a handler no socket, so the connection is found by its 4-tuple
// (Request::local_addr/local_port/remote_addr/remote_port) among the process's sockets
// (/proc/self/fd). That is exact while the handler runs: httplib keeps the socket open until the
// handler returns. A watcher thread then polls it for POLLRDHUP (the peer's FIN) and calls
// `on_gone` once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include <httplib.h>

namespace asl::gateway {

class ConnectionWatch {
 public:
  // Starts watching; does nothing when the socket cannot be found (then gone() stays false).
  ConnectionWatch(const httplib::Request& req, std::function<void()> on_gone);
  ~ConnectionWatch();  // stops the watcher (on_gone is not called after this returns)
  ConnectionWatch(const ConnectionWatch&) = delete;
  ConnectionWatch& operator=(const ConnectionWatch&) = delete;

  bool gone() const { return gone_.load(); }

 private:
  void Run(int fd, std::function<void()> on_gone);

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<bool> gone_{false};
  std::thread thread_;
};

}  // namespace asl::gateway
