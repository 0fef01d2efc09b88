#include "easysync/status.h"

#include <cstring>

namespace easysync {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kInvalidArgument:
      return "Invalid argument";
    case StatusCode::kNotFound:
      return "Not found";
    case StatusCode::kCorruption:
      return "Corruption";
    case StatusCode::kTypeMismatch:
      return "Type mismatch";
    case StatusCode::kTimeout:
      return "Timeout";
    case StatusCode::kIoError:
      return "I/O error";
    case StatusCode::kResourceExhausted:
      return "Resource exhausted";
    case StatusCode::kUnavailable:
      return "Unavailable";
    case StatusCode::kPermissionDenied:
      return "Permission denied";
    case StatusCode::kInternal:
      return "Internal error";
  }
  return "Unknown";
}

Status Status::FromErrno(std::string_view what, int err) {
  char buf[128];
  // GNU strerror_r returns the message (which may not be buf).
  const char* msg = strerror_r(err, buf, sizeof(buf));
  return IoError(std::string(what) + ": " + msg);
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s(StatusCodeName(code_));
  s += ": ";
  s += message_;
  return s;
}

}  // namespace easysync
