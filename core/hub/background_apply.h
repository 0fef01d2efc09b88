// The hub's copy of a segmented write, brought up to date on a thread of its own at a low CPU
// priority.
//
// The hub relays each segment of a segmented write as it comes (cut-through), so applying the
// write to the hub's own copy is off the path from writer to readers; but it is a pass over
// the whole tensor (decode and verify every segment), and on the progress thread it held back
// whatever came meanwhile by a segment (1-7 ms), another attribute's relay among it. Here it
// runs beside the progress thread, at nice kApplyNice: where the hub shares its machine with
// clients (decoding the very same write, say), they come first. Whoever needs the value
// before the job ended (Stop) waits for the segment being applied at most, then applies the
// rest itself: the low priority delays that, it cannot starve it.
//
// Thread-safety: Start/Stop/Done/busy from one thread (the hub's progress thread).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "easysync/status.h"

namespace easysync::codec {
class Decoder;
}  // namespace easysync::codec

namespace easysync::hub {

// The nice value of the applier thread: it gets about a tenth of a CPU's share against one
// busy thread at nice 0, so it mostly waits for idle CPU, and a segment that someone waits
// for still ends in tens of milliseconds on a machine whose every CPU is busy.
inline constexpr int kApplyNice = 10;

struct ApplyJob {
  struct Segment {
    const uint8_t* frame = nullptr;  // the segment's codec frame
    size_t frame_size = 0;
    size_t offset = 0;  // the tensor data bytes it covers
    size_t bytes = 0;
    std::optional<uint64_t> base_hash;  // the base's segment hash, when known
  };
  std::vector<Segment> segments;
  const uint8_t* base = nullptr;  // tensor data the segments apply to (read only, unless
                                  // in place)
  uint8_t* out = nullptr;         // tensor data they go into; no one else touches it meanwhile
  // When set, makes out: run once, before the first segment, by whoever applies it (the
  // applier thread, or the hub's progress thread doing what the applier did not get to).
  std::function<void(ApplyJob&)> prepare;
  // When set, run once after every segment applied, by whoever applied the last one.
  std::function<void(ApplyJob&)> finish;
  // out is base: each segment is applied in place (a segment that does not verify is left as
  // it was; RevertApplied undoes the ones before it). Every segment is then a delta.
  bool in_place = false;
  std::shared_ptr<const void> keep;  // keeps frames, base and out alive while it runs
  size_t first = 0;                  // segments before it are in out already

  // Set by the applier: segments [first, applied) went into out.
  std::atomic<size_t> applied{0};
  // Under the applier's lock: the job ended (every segment, a failure, or Stop), and why.
  bool done = false;
  Status status;
  std::atomic<bool> stop{false};
};

// Applies segment i of job into job.out (the applier thread, or the hub's progress thread
// doing what the applier did not get to).
Status ApplySegment(codec::Decoder& decoder, const ApplyJob& job, size_t i);

// For a job in place that stopped (failed): undoes segments [first, applied), so that out holds
// the base again. Fails only when a segment's bytes do not come back to its base (they were
// changed by someone else meanwhile).
Status RevertApplied(codec::Decoder& decoder, const ApplyJob& job);

class BackgroundApply {
 public:
  // wake runs on the applier thread after each job ends (the hub posts to its progress
  // thread, which then collects the job).
  explicit BackgroundApply(std::function<void()> wake);
  ~BackgroundApply();  // stops the job in progress and joins the thread
  BackgroundApply(const BackgroundApply&) = delete;
  BackgroundApply& operator=(const BackgroundApply&) = delete;

  // Starts a job. REQUIRES: no job in progress (the last one is Done).
  void Start(std::shared_ptr<ApplyJob> job);
  // Whether the job ended; then its applied count and status are final.
  bool Done(const ApplyJob& job);
  // Ends the job after the segment being applied, and returns once it ended.
  void Stop(ApplyJob& job);
  // Whether a job is in progress.
  bool busy();

 private:
  void Run();

  std::function<void()> wake_;
  std::mutex mu_;
  std::condition_variable cv_;     // a job came, ended, or the thread is to exit
  std::shared_ptr<ApplyJob> job_;  // the job in progress (null: none)
  bool exit_ = false;
  std::thread thread_;
};

}  // namespace easysync::hub
