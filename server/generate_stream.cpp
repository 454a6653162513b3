#include "server/generate_stream.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <spdlog/spdlog.h>

#include "server/request_convert.h"

namespace asl::server {
namespace {

// `out` is reused: the previous write has completed, so its bytes can go.
void Serialize(const v1::GenerateResponse& msg, grpc::ByteBuffer* out) {
  out->Clear();
  bool own = false;
  // Serialization of a message we built cannot fail short of memory exhaustion.
  (void)grpc::SerializationTraits<v1::GenerateResponse>::Serialize(msg, out, &own);
}

}  // namespace

class GenerateStream::Reactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit Reactor(std::shared_ptr<GenerateStream> stream) : stream_(std::move(stream)) {}
  void OnWriteDone(bool ok) override { stream_->OnWriteDone(ok); }
  void OnCancel() override { stream_->OnCancel(); }
  void OnDone() override {
    stream_->OnDone();
    delete this;
  }

 private:
  std::shared_ptr<GenerateStream> stream_;
};

GenerateStream::GenerateStream(Engine* engine, std::string request_id, bool detailed_report)
    : engine_(engine), request_id_(std::move(request_id)), detailed_report_(detailed_report) {}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerateStream::MakeReactor() {
  auto* r = new Reactor(shared_from_this());
  std::lock_guard<std::mutex> lock(mu_);
  reactor_ = r;
  return r;
}

void GenerateStream::Reject(const grpc::Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    engine_done_ = true;
    final_status_ = status;
  }
  Pump();
}

void GenerateStream::Start(RequestId id) {
  bool cancelled = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    engine_id_ = id;
    cancelled = cancelled_ && !engine_done_;
  }
  if (cancelled) engine_->Cancel(id);  // the client left while we were submitting
}

void GenerateStream::OnTokens(const TokenChunk& chunk) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finish_called_ || cancelled_) return;  // nobody is listening any more
    AppendChunk(chunk, &pending_);
    has_pending_ = true;
  }
  Pump();
}

void GenerateStream::OnFinish(const FinishEvent& ev) {
  const PruningReport& r = ev.pruning;
  spdlog::info(
      "request {} finish: reason {}, {} prompt tokens, policy {}, selection {} layer {}, kv kept {}/{}, "
      "ttft {:.3f}s, {} tokens, e2e {:.3f}s",
      request_id_, FinishReasonName(ev.reason), ev.usage.prompt_tokens, PolicyName(r.policy),
      SelectionOutcomeName(r.outcome), r.selection_layer, r.num_kv_tokens_kept, r.num_kv_tokens_full,
      ev.timings.ttft_seconds, ev.usage.completion_tokens, ev.timings.e2e_seconds);
  {
    std::lock_guard<std::mutex> lock(mu_);
    engine_done_ = true;
    switch (ev.reason) {
      case FinishReason::kStop:
      case FinishReason::kLength:
        has_complete_ = true;
        final_status_ = grpc::Status::OK;
        break;
      case FinishReason::kAbort:
        has_complete_ = true;
        final_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                     "request " + request_id_ + " aborted: the server is shutting down" +
                                         (ev.status.ok() ? "" : " (" + ev.status.message() + ")"));
        break;
      case FinishReason::kCancelled:
        final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "request " + request_id_ + " cancelled");
        break;
      case FinishReason::kError:
        final_status_ = grpc::Status(grpc::StatusCode::INTERNAL, "request " + request_id_ + ": " + ev.status.message());
        break;
    }
    if (has_complete_) FillComplete(ev, detailed_report_, &complete_);
  }
  Pump();
}

void GenerateStream::OnWriteDone(bool ok) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    write_in_flight_ = false;
    if (!ok) cancelled_ = true;  // the stream is broken: the client is gone
  }
  Pump();
}

void GenerateStream::OnCancel() {
  RequestId id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (!engine_done_) id = engine_id_;
  }
  // Frees the request's KV blocks at the engine's next step; its OnFinish is then dropped.
  if (id != 0) engine_->Cancel(id);
  Pump();
}

void GenerateStream::OnDone() {
  std::lock_guard<std::mutex> lock(mu_);
  reactor_ = nullptr;
}

void GenerateStream::Pump() {
  enum class Action { kWrite, kFinish, kWriteAndFinish };
  Action action;
  Reactor* reactor = nullptr;
  grpc::Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (reactor_ == nullptr || finish_called_ || write_in_flight_) return;
    reactor = reactor_;
    if (cancelled_) {
      // The client will not read the status; gRPC reports CANCELLED or DEADLINE_EXCEEDED itself.
      finish_called_ = true;
      action = Action::kFinish;
      status = grpc::Status(grpc::StatusCode::CANCELLED, "request " + request_id_ + " cancelled");
    } else if (has_pending_) {
      v1::GenerateResponse msg;
      msg.set_request_id(request_id_);
      msg.mutable_chunk()->Swap(&pending_);
      pending_.Clear();
      has_pending_ = false;
      Serialize(msg, &current_);
      write_in_flight_ = true;
      action = Action::kWrite;
    } else if (engine_done_) {
      finish_called_ = true;
      status = final_status_;
      if (has_complete_) {
        v1::GenerateResponse msg;
        msg.set_request_id(request_id_);
        msg.mutable_complete()->Swap(&complete_);
        Serialize(msg, &current_);
        action = Action::kWriteAndFinish;
      } else {
        action = Action::kFinish;
      }
    } else {
      return;
    }
  }
  // Outside mu_: the reactor is alive because we hold the right to its next operation (a write
  // in flight or the Finish), and OnDone cannot run before that operation completes.
  switch (action) {
    case Action::kWrite: reactor->StartWrite(&current_); break;
    case Action::kFinish: reactor->Finish(status); break;
    case Action::kWriteAndFinish: reactor->StartWriteAndFinish(&current_, grpc::WriteOptions(), status); break;
  }
}

}  // namespace asl::server
