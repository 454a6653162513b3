// One Generate call: the gRPC write reactor and the small shared state behind it, which is also
// the engine's RequestSink.
//
// Why two objects: gRPC deletes the reactor when the call is done (OnDone), but the engine may
// still hold the sink (a cancelled request's OnFinish arrives one step later). The engine owns a
// shared_ptr to GenerateStream; the reactor holds another and detaches itself in OnDone, after
// which the stream drops whatever the engine still sends.
//
// Rules (docs/style.md, gRPC callback API): reactions never block (they take only mu_, briefly);
// at most one write in flight; Finish exactly once, also after cancellation. Every write and the
// Finish are started by Pump(), which claims the right to act under mu_ and acts outside it, so no
// gRPC call is made while holding mu_ (gRPC may run a reaction inline).
//
// Threads: OnTokens/OnFinish on the engine thread; OnWriteDone/OnCancel/OnDone on gRPC threads;
// Start on the gRPC thread running the handler.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "asl/v1/generation.pb.h"
#include "engine/engine.h"

namespace asl::server {

class ServerMetrics;

class GenerateStream final : public RequestSink, public std::enable_shared_from_this<GenerateStream> {
 public:
  // `engine` must outlive the gRPC server (it does: the server is shut down first).
  GenerateStream(Engine* engine, std::string request_id, bool detailed_report);

  // Creates the reactor for this call; the handler returns it to gRPC.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* MakeReactor();

  // Ends the call now with `status` (a request refused before Submit). At most once, before Start.
  void Reject(const grpc::Status& status);
  // Records the engine's id after a successful Submit, so that a cancel can reach the engine.
  void Start(RequestId id);

  // RequestSink (engine thread).
  void OnTokens(const TokenChunk& chunk) override;
  void OnFinish(const FinishEvent& event) override;

  const std::string& request_id() const { return request_id_; }

 private:
  class Reactor;

  void OnWriteDone(bool ok);
  void OnCancel();
  void OnDone();
  // Starts the next write or the Finish if nothing is in flight. Call without mu_ held.
  void Pump();

  Engine* const engine_;
  const std::string request_id_;
  const bool detailed_report_;

  std::mutex mu_;
  Reactor* reactor_ = nullptr;         // null after OnDone
  RequestId engine_id_ = 0;            // 0 until Start
  bool cancelled_ = false;             // client cancelled, deadline passed or a write failed
  bool write_in_flight_ = false;
  bool finish_called_ = false;
  bool has_pending_ = false;           // pending_ holds tokens not yet written
  v1::GenerateChunk pending_;          // tokens since the last write, merged
  bool engine_done_ = false;           // OnFinish arrived (or Reject)
  bool has_complete_ = false;          // complete_ is to be written before Finish
  v1::GenerateComplete complete_;
  grpc::Status final_status_;
  grpc::ByteBuffer current_;           // the message being written; owned by the write in flight
};

}  // namespace asl::server
