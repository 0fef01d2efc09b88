// BackgroundApply: the hub's applier thread applies a segmented write's frames in order, can
// be stopped between segments (the caller applies the rest), and ends a job at the first
// segment that does not verify.
#include "hub/background_apply.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <vector>

#include "easysync/codec.h"

namespace easysync::hub {
namespace {

// A bfloat16 tensor in `count` segments: base, new values changing ~2% of the elements, and
// each segment's delta frame (new against base).
struct Write {
  static constexpr size_t kSegmentBytes = 64 << 10;
  size_t count;
  std::vector<uint8_t> base, now;
  std::vector<std::vector<uint8_t>> frames;

  explicit Write(size_t segments) : count(segments) {
    const size_t n = count * kSegmentBytes;
    base.resize(n);
    std::mt19937_64 rng(7 + segments);
    for (auto& b : base) b = static_cast<uint8_t>(rng());
    now = base;
    for (size_t i = 0; i < n; i += 2) {
      if (rng() % 50 == 0) now[i] ^= 1;
    }
    codec::Encoder encoder;
    for (size_t s = 0; s < count; ++s) {
      const size_t elements = kSegmentBytes / 2;
      const codec::TensorBytes cur{DType::kBFloat16, elements, now.data() + s * kSegmentBytes};
      const codec::TensorBytes was{DType::kBFloat16, elements, base.data() + s * kSegmentBytes};
      std::vector<uint8_t> frame(codec::EncodeBound(DType::kBFloat16, elements));
      Result<size_t> size = encoder.Encode(cur, &was, 1, 2, frame);
      EXPECT_TRUE(size.ok());
      frame.resize(size.ok() ? *size : 0);
      frames.push_back(std::move(frame));
    }
  }

  // A job applying every segment into out, hashes of the base known or not.
  std::shared_ptr<ApplyJob> Job(std::vector<uint8_t>* out, bool known_base) const {
    auto job = std::make_shared<ApplyJob>();
    for (size_t s = 0; s < count; ++s) {
      std::optional<uint64_t> hash;
      if (known_base) hash = codec::HashBytes({base.data() + s * kSegmentBytes, kSegmentBytes});
      job->segments.push_back(
          {frames[s].data(), frames[s].size(), s * kSegmentBytes, kSegmentBytes, hash});
    }
    job->base = base.data();
    job->out = out->data();
    return job;
  }

  bool SegmentIsNew(const std::vector<uint8_t>& out, size_t s) const {
    return std::memcmp(out.data() + s * kSegmentBytes, now.data() + s * kSegmentBytes,
                       kSegmentBytes) == 0;
  }
};

// Counts the applier's wake-ups (one per job that ended) and waits for them.
struct Wakes {
  std::mutex mu;
  std::condition_variable cv;
  int count = 0;
  std::function<void()> Callback() {
    return [this] {
      std::lock_guard<std::mutex> lock(mu);
      ++count;
      cv.notify_all();
    };
  }
  bool WaitFor(int n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(30), [&] { return count >= n; });
  }
};

TEST(BackgroundApply, AppliesEverySegmentInOrderAndWakesTheHubOncePerJob) {
  Wakes wakes;
  BackgroundApply applier(wakes.Callback());
  for (bool known : {false, true}) {
    const Write w(6);
    std::vector<uint8_t> out(w.base.size(), 0xEE);
    auto job = w.Job(&out, known);
    EXPECT_FALSE(applier.busy());
    applier.Start(job);
    ASSERT_TRUE(wakes.WaitFor(known ? 2 : 1));
    EXPECT_TRUE(applier.Done(*job));
    EXPECT_FALSE(applier.busy());
    EXPECT_TRUE(job->status.ok()) << job->status.ToString();
    EXPECT_EQ(job->applied.load(), w.count);
    EXPECT_EQ(out, w.now);
  }
}

TEST(BackgroundApply, AJobStartsAtItsFirstSegmentAndOneStoppedBeforeItRanAppliesNothing) {
  Wakes wakes;
  BackgroundApply applier(wakes.Callback());
  const Write w(4);
  for (bool stopped : {false, true}) {
    std::vector<uint8_t> out(w.base.size(), 0xEE);
    auto job = w.Job(&out, true);
    job->first = 2;  // the caller applied 0 and 1 (here: not)
    job->stop.store(stopped);
    applier.Start(job);
    ASSERT_TRUE(wakes.WaitFor(stopped ? 2 : 1));
    EXPECT_TRUE(job->status.ok());
    EXPECT_EQ(job->applied.load(), stopped ? 2u : 4u);
    EXPECT_EQ(out[0], 0xEE);
    EXPECT_EQ(out[2 * Write::kSegmentBytes - 1], 0xEE);
    EXPECT_EQ(w.SegmentIsNew(out, 2), !stopped);
    EXPECT_EQ(w.SegmentIsNew(out, 3), !stopped);
    if (stopped) {
      EXPECT_EQ(out, std::vector<uint8_t>(w.base.size(), 0xEE));
    }
  }
}

TEST(BackgroundApply, StopEndsTheJobBetweenSegmentsAndTheCallerAppliesTheRest) {
  Wakes wakes;
  BackgroundApply applier(wakes.Callback());
  const Write w(256);  // 16 MiB: usually still going when Stop comes
  // A busy machine may let the thread finish before Stop comes: try again then.
  for (int attempt = 0;; ++attempt) {
    ASSERT_LT(attempt, 50) << "every job ended before Stop came";
    std::vector<uint8_t> out(w.base.size(), 0xEE);
    auto job = w.Job(&out, true);
    applier.Start(job);
    applier.Stop(*job);
    EXPECT_TRUE(applier.Done(*job));
    EXPECT_TRUE(job->status.ok()) << job->status.ToString();
    ASSERT_TRUE(wakes.WaitFor(attempt + 1));
    const size_t applied = job->applied.load();
    if (applied == w.count) continue;
    for (size_t s = 0; s < applied; ++s) ASSERT_TRUE(w.SegmentIsNew(out, s)) << s;
    // Nothing past where it stopped was written: the caller owns those bytes now.
    EXPECT_EQ(out[applied * Write::kSegmentBytes], 0xEE);
    EXPECT_EQ(out.back(), 0xEE);
    codec::Decoder decoder;
    for (size_t s = applied; s < w.count; ++s) {
      const ApplyJob::Segment& seg = job->segments[s];
      ASSERT_TRUE(decoder
                      .Decode({seg.frame, seg.frame_size}, w.base.data() + seg.offset, seg.bytes,
                              {out.data() + seg.offset, seg.bytes})
                      .ok());
    }
    EXPECT_EQ(out, w.now);
    applier.Stop(*job);  // a job that ended: returns at once
    break;
  }
}

TEST(BackgroundApply, ASegmentThatDoesNotVerifyEndsTheJobWithItsError) {
  Wakes wakes;
  BackgroundApply applier(wakes.Callback());
  Write w(5);
  w.frames[3].back() ^= 0x40;  // the payload's last byte: the frame no longer verifies
  std::vector<uint8_t> out(w.base.size(), 0xEE);
  auto job = w.Job(&out, true);
  applier.Start(job);
  ASSERT_TRUE(wakes.WaitFor(1));
  EXPECT_FALSE(job->status.ok());
  EXPECT_EQ(job->applied.load(), 3u);
  for (size_t s = 0; s < 3; ++s) EXPECT_TRUE(w.SegmentIsNew(out, s));
  EXPECT_EQ(out[4 * Write::kSegmentBytes], 0xEE);  // nothing after the failure
  // The applier takes the next job as usual.
  const Write good(2);
  std::vector<uint8_t> out2(good.base.size());
  auto next = good.Job(&out2, false);
  applier.Start(next);
  ASSERT_TRUE(wakes.WaitFor(2));
  EXPECT_TRUE(next->status.ok());
  EXPECT_EQ(out2, good.now);
}

TEST(BackgroundApply, AJobInPlaceThatFailsIsRevertedToItsBase) {
  Wakes wakes;
  BackgroundApply applier(wakes.Callback());
  Write w(5);
  w.frames[3].back() ^= 0x40;  // applied in place, segment 3 does not verify
  std::vector<uint8_t> value = w.base;
  auto job = w.Job(&value, true);
  job->base = value.data();
  job->in_place = true;
  applier.Start(job);
  ASSERT_TRUE(wakes.WaitFor(1));
  EXPECT_FALSE(job->status.ok());
  ASSERT_EQ(job->applied.load(), 3u);
  for (size_t s = 0; s < 3; ++s) EXPECT_TRUE(w.SegmentIsNew(value, s));
  codec::Decoder decoder;
  ASSERT_TRUE(RevertApplied(decoder, *job).ok());
  EXPECT_EQ(value, w.base);  // the failed segment left as it was, those before it undone
  // Bytes that are not the segments' results do not come back as the base: found out.
  job->applied.store(2);
  EXPECT_EQ(RevertApplied(decoder, *job).code(), StatusCode::kCorruption);
}

TEST(BackgroundApply, GoingAwayWithAJobInProgressStopsIt) {
  const Write w(256);
  std::vector<uint8_t> out(w.base.size(), 0xEE);
  auto job = w.Job(&out, true);
  {
    BackgroundApply applier(nullptr);
    applier.Start(job);
  }  // joins after the segment in progress (or once the job is done)
  EXPECT_TRUE(job->done);
  EXPECT_TRUE(job->status.ok());
  for (size_t s = 0; s < job->applied.load(); ++s) EXPECT_TRUE(w.SegmentIsNew(out, s)) << s;
}

}  // namespace
}  // namespace easysync::hub
