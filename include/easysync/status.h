// Status and Result<T>: how every EasySync layer reports failure.
//
// The core never throws; it returns Status or Result<T>, both [[nodiscard]]. The C++
// convenience API (Synced<T>, shm_connect) turns a failed Status into easysync::Error at
// the edge. Thread-safety: values, freely copyable.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace easysync {

enum class StatusCode : uint8_t {
  kOk = 0,
  kInvalidArgument,    // the caller passed something unusable (a bad name, a wrong type)
  kNotFound,           // the named thing does not exist
  kCorruption,         // bytes read from a segment or a frame do not verify
  kTypeMismatch,       // an attribute was declared with another kind elsewhere
  kTimeout,            // a deadline passed
  kIoError,            // a system call failed (errno in the message)
  kResourceExhausted,  // a table, arena or limit is full
  kUnavailable,        // a peer or a segment is gone
  kPermissionDenied,   // ownership or mode of a shared resource is wrong
  kInternal,           // a broken invariant: a bug
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string msg) {
    return {StatusCode::kInvalidArgument, std::move(msg)};
  }
  static Status NotFound(std::string msg) { return {StatusCode::kNotFound, std::move(msg)}; }
  static Status Corruption(std::string msg) { return {StatusCode::kCorruption, std::move(msg)}; }
  static Status TypeMismatch(std::string msg) {
    return {StatusCode::kTypeMismatch, std::move(msg)};
  }
  static Status Timeout(std::string msg) { return {StatusCode::kTimeout, std::move(msg)}; }
  static Status IoError(std::string msg) { return {StatusCode::kIoError, std::move(msg)}; }
  static Status ResourceExhausted(std::string msg) {
    return {StatusCode::kResourceExhausted, std::move(msg)};
  }
  static Status Unavailable(std::string msg) { return {StatusCode::kUnavailable, std::move(msg)}; }
  static Status PermissionDenied(std::string msg) {
    return {StatusCode::kPermissionDenied, std::move(msg)};
  }
  static Status Internal(std::string msg) { return {StatusCode::kInternal, std::move(msg)}; }
  // An IoError naming the failed call and errno's text.
  static Status FromErrno(std::string_view what, int err);

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  Status(StatusCode code, std::string msg) : code_(code), message_(std::move(msg)) {}
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// A value or the Status that explains why there is none.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    if (std::get<Status>(v_).ok()) v_ = Status::Internal("Result built from an OK status");
  }
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  // REQUIRES: ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }

 private:
  std::variant<T, Status> v_;
};

// What the C++ convenience API throws.
class Error : public std::runtime_error {
 public:
  explicit Error(Status status)
      : std::runtime_error(status.ToString()), status_(std::move(status)) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};

inline void ThrowIfError(const Status& s) {
  if (!s.ok()) throw Error(s);
}
template <class T>
T ValueOrThrow(Result<T>&& r) {
  if (!r.ok()) throw Error(r.status());
  return std::move(r).value();
}

}  // namespace easysync

#define EASYSYNC_CONCAT_INNER_(a, b) a##b
#define EASYSYNC_CONCAT_(a, b) EASYSYNC_CONCAT_INNER_(a, b)

#define EASYSYNC_RETURN_IF_ERROR(expr)       \
  do {                                       \
    ::easysync::Status _es_status = (expr);  \
    if (!_es_status.ok()) return _es_status; \
  } while (0)

#define EASYSYNC_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                    \
  if (!tmp.ok()) return tmp.status();                   \
  lhs = std::move(tmp).value()

#define EASYSYNC_ASSIGN_OR_RETURN(lhs, expr) \
  EASYSYNC_ASSIGN_OR_RETURN_IMPL_(EASYSYNC_CONCAT_(_es_result_, __LINE__), lhs, expr)
