// The engine's scheduler.max_waiting limit: requests submitted and not yet scheduled.
//
// A request takes a slot in Submit (the caller's thread) and gives it back when it is first
// scheduled, when it finishes without ever being scheduled, or when the client cancels it. The
// cancel gives the slot back at once, from the caller's thread: waiting for the engine thread to
// drain its inbox would hold the slot for the rest of the engine step in progress, and a burst of
// cancelled requests would make the next one get "queue full". Releasing an id twice is harmless.
#pragma once

#include <cstdint>
#include <mutex>
#include <unordered_set>

#include "engine/request.h"

namespace asl {

class WaitingSlots {
 public:
  // False when `limit` slots are taken already.
  bool Take(RequestId id, int64_t limit) {
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<int64_t>(ids_.size()) >= limit) return false;
    ids_.insert(id);
    return true;
  }
  void Release(RequestId id) {
    std::lock_guard<std::mutex> lock(mu_);
    ids_.erase(id);
  }

 private:
  std::mutex mu_;
  std::unordered_set<RequestId> ids_;
};

}  // namespace asl
