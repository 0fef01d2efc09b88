#include "hub/background_apply.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <utility>

#include "easysync/codec.h"

namespace easysync::hub {

Status ApplySegment(codec::Decoder& decoder, const ApplyJob& job, size_t i) {
  const ApplyJob::Segment& s = job.segments[i];
  codec::DecodeOptions options;
  options.known_base_hash = s.base_hash;
  return decoder.Decode({s.frame, s.frame_size}, job.base + s.offset, s.bytes,
                        {job.out + s.offset, s.bytes}, options);
}

Status RevertApplied(codec::Decoder& decoder, const ApplyJob& job) {
  for (size_t i = job.first; i < job.applied.load(); ++i) {
    const ApplyJob::Segment& s = job.segments[i];
    EASYSYNC_RETURN_IF_ERROR(
        decoder.Revert({s.frame, s.frame_size}, {job.out + s.offset, s.bytes}));
  }
  return Status::Ok();
}

BackgroundApply::BackgroundApply(std::function<void()> wake) : wake_(std::move(wake)) {
  thread_ = std::thread([this] { Run(); });
}

BackgroundApply::~BackgroundApply() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    exit_ = true;
    if (job_) job_->stop.store(true);
  }
  cv_.notify_all();
  thread_.join();
}

void BackgroundApply::Start(std::shared_ptr<ApplyJob> job) {
  job->applied.store(job->first);
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = std::move(job);
  }
  cv_.notify_all();
}

bool BackgroundApply::Done(const ApplyJob& job) {
  std::lock_guard<std::mutex> lock(mu_);
  return job.done;
}

bool BackgroundApply::busy() {
  std::lock_guard<std::mutex> lock(mu_);
  return job_ != nullptr;
}

void BackgroundApply::Stop(ApplyJob& job) {
  job.stop.store(true);
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return job.done; });
}

void BackgroundApply::Run() {
  // Per thread on Linux (the tid, not the process). Failing that it runs at normal priority.
  (void)setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), kApplyNice);
  codec::Decoder decoder;
  for (;;) {
    std::shared_ptr<ApplyJob> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return exit_ || job_ != nullptr; });
      if (exit_ && job_ == nullptr) return;
      job = job_;
    }
    Status status;
    if (job->prepare && !job->stop.load()) std::exchange(job->prepare, nullptr)(*job);
    for (size_t i = job->first; i < job->segments.size() && !job->stop.load(); ++i) {
      status = ApplySegment(decoder, *job, i);
      if (!status.ok()) break;
      job->applied.store(i + 1);
    }
    if (status.ok() && job->finish && !job->stop.load() &&
        job->applied.load() == job->segments.size()) {
      std::exchange(job->finish, nullptr)(*job);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      job->status = std::move(status);
      job->keep.reset();  // before done: the hub may reuse the base's buffer once it is
      job->done = true;
      job_ = nullptr;
    }
    job.reset();
    cv_.notify_all();
    if (wake_) wake_();
  }
}

}  // namespace easysync::hub
