// The segment layout: sizes, alignment and the header a creator writes.
#include "shm/layout.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "easysync/client.h"
#include "process_util.h"

namespace easysync::shm {
namespace {

TEST(ShmLayout, StructsKeepHotFieldsOnTheirOwnLines) {
  EXPECT_EQ(sizeof(BufferDesc), 2 * kAlign);
  EXPECT_EQ(sizeof(Slot) % kAlign, 0u);
  EXPECT_EQ(offsetof(Slot, published), 0u);
  EXPECT_EQ(offsetof(Slot, lock) % kAlign, 0u);
  EXPECT_EQ(offsetof(Slot, buf) % kAlign, 0u);
  EXPECT_EQ(offsetof(SegmentHeader, bell) % kAlign, 0u);
  // A scalar written inline shares the first line with seq and length.
  EXPECT_LE(offsetof(BufferDesc, payload) + sizeof(int64_t), kAlign);
}

TEST(ShmLayout, CreatorWritesTheDocumentedHeader) {
  ShmOptions o;
  o.max_attributes = 100;
  o.arena_bytes = 1 << 20;
  const std::string cluster = testing::UniqueCluster("layout");
  auto client = shm_connect(cluster, o);
  struct stat st {};
  ASSERT_EQ(stat(("/dev/shm/easysync." + cluster).c_str(), &st), 0);
  const uint64_t slots = AlignUp(sizeof(SegmentHeader), 4096);
  const uint64_t arena = AlignUp(slots + 100 * sizeof(Slot), 4096);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), arena + (1 << 20));
  // A second client with other options adopts the creator's layout.
  ShmOptions other;
  other.max_attributes = 7;
  auto second = TryShmConnect(cluster, other);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(
        second.value()->Declare("O", "a" + std::to_string(i), ValueKind::kInt64, nullptr).ok());
  }
}

}  // namespace
}  // namespace easysync::shm
