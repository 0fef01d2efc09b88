#include "easysync/status.h"

#include <gtest/gtest.h>

namespace easysync {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return Status::InvalidArgument("odd");
  return x / 2;
}

Status Quarter(int x, int* out) {
  EASYSYNC_ASSIGN_OR_RETURN(int h, Half(x));
  EASYSYNC_ASSIGN_OR_RETURN(*out, Half(h));
  return Status::Ok();
}

TEST(Status, NamedConstructorsCarryCodeAndMessage) {
  Status s = Status::Corruption("bad frame");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_EQ(s.ToString(), "Corruption: bad frame");
  EXPECT_TRUE(Status::Ok().ok());
}

TEST(Status, FromErrnoNamesTheCall) {
  Status s = Status::FromErrno("shm_open /x", ENOENT);
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_NE(s.message().find("shm_open /x: No such file"), std::string::npos) << s.message();
}

TEST(Result, PropagatesThroughMacros) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  Status s = Quarter(6, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
}

TEST(Result, OkStatusIsNotAValue) {
  Result<int> r{Status::Ok()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

TEST(Error, ThrowIfErrorThrowsWithStatus) {
  try {
    ThrowIfError(Status::Timeout("late"));
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.status().code(), StatusCode::kTimeout);
  }
}

}  // namespace
}  // namespace easysync
