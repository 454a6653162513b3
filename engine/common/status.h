// Status and StatusOr: how the engine reports expected failures (bad request, corrupt model
// file, pool exhausted). Invariant violations use ASL_CHECK instead; exceptions are caught at the
// libtorch edge and turned into a Status.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace asl {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,     // a request field or parameter is wrong (the message names it)
  kNotFound,            // a file or id does not exist
  kDataLoss,            // a model file is truncated or corrupt (the message names the file)
  kOutOfRange,          // prompt (+ max_tokens) longer than the context, the prompt limit or the pool
  kResourceExhausted,   // queue full (worth a retry later)
  kUnavailable,         // shutting down
  kCancelled,
  kDeadlineExceeded,
  kUnimplemented,       // a valid but unsupported feature (quant type, architecture)
  kInternal,
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return {}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status OutOfRange(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status Unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : v_(std::move(value)) {}          // NOLINT: implicit by design
  StatusOr(Status status) : v_(std::move(status)) {    // NOLINT: implicit by design
    if (std::get<Status>(v_).ok()) v_ = Status(StatusCode::kInternal, "StatusOr built from OK status");
  }
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

[[noreturn]] void CheckFailed(const char* file, int line, const char* expr, const std::string& msg);

}  // namespace asl

#define ASL_RETURN_IF_ERROR(expr)            \
  do {                                       \
    ::asl::Status _st = (expr);              \
    if (!_st.ok()) return _st;               \
  } while (0)

#define ASL_CONCAT_INNER(a, b) a##b
#define ASL_CONCAT(a, b) ASL_CONCAT_INNER(a, b)
#define ASL_ASSIGN_OR_RETURN(lhs, expr) ASL_ASSIGN_OR_RETURN_IMPL(ASL_CONCAT(_so_, __LINE__), lhs, expr)
#define ASL_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

// Invariant checks: never for user input (validate that and return a Status).
#define ASL_CHECK(cond, msg)                                                  \
  do {                                                                        \
    if (!(cond)) ::asl::CheckFailed(__FILE__, __LINE__, #cond, (msg));        \
  } while (0)
