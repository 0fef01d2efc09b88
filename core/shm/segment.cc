#include "segment.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>
#include <thread>

namespace easysync::shm {
namespace {

constexpr const char* kShmDir = "/dev/shm";
constexpr off_t kAdminByte = 0;
constexpr off_t kAliveByte = 1;

// Open-file-description locks: owned by this fd, not by the process, so several clients
// in one process stay independent.
int OfdLock(int fd, short type, off_t byte, bool wait) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  int rc;
  do {
    rc = fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl);
  } while (rc != 0 && errno == EINTR);
  return rc;
}

// True when some other open file description holds a lock on `byte`.
Result<bool> OthersHoldLock(int fd, off_t byte) {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return Status::FromErrno("fcntl(F_OFD_GETLK)", errno);
  return fl.l_type != F_UNLCK;
}

Result<Mapping> MapFd(int fd, uint64_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Status::FromErrno("mmap", errno);
  return Mapping(static_cast<std::byte*>(p), bytes);
}

// Checks that a shared object belongs to us and is private to us.
Status CheckOwnership(int fd, const std::string& name, struct stat* st) {
  if (fstat(fd, st) != 0) return Status::FromErrno("fstat " + name, errno);
  if (st->st_uid != geteuid()) {
    return Status::PermissionDenied(name + " belongs to uid " + std::to_string(st->st_uid) +
                                    ", not to this process's uid " + std::to_string(geteuid()));
  }
  if ((st->st_mode & 077) != 0) {
    return Status::PermissionDenied(name + " is accessible to other users (mode " +
                                    std::to_string(st->st_mode & 0777) + "); expected 0600");
  }
  return Status::Ok();
}

}  // namespace

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    if (base_ != nullptr) munmap(base_, size_);
    base_ = o.base_;
    size_ = o.size_;
    o.base_ = nullptr;
  }
  return *this;
}

Mapping::~Mapping() {
  if (base_ != nullptr) munmap(base_, size_);
}

Status ValidateClusterName(std::string_view name) {
  if (name.empty() || name.size() > kMaxClusterName) {
    return Status::InvalidArgument("cluster name must have 1 to " +
                                   std::to_string(kMaxClusterName) + " characters, got " +
                                   std::to_string(name.size()));
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    if (!ok) {
      return Status::InvalidArgument("cluster name '" + std::string(name) +
                                     "' may only use letters, digits, '_' and '-'");
    }
  }
  return Status::Ok();
}

Result<std::unique_ptr<Segment>> Segment::Attach(std::string_view cluster,
                                                 const ShmOptions& options) {
  EASYSYNC_RETURN_IF_ERROR(ValidateClusterName(cluster));
  if (options.max_attributes == 0 || options.max_attributes > (1u << 20)) {
    return Status::InvalidArgument("max_attributes must be in 1..1048576");
  }
  if (options.arena_bytes > (uint64_t{1} << 36))
    return Status::InvalidArgument("arena_bytes too large");
  std::unique_ptr<Segment> seg(new Segment());
  seg->cluster_ = std::string(cluster);
  seg->shm_name_ = "/easysync." + seg->cluster_;
  const auto deadline = Clock::now() + options.attach_timeout;
  for (;;) {
    seg->fd_ = shm_open(seg->shm_name_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (seg->fd_ < 0) return Status::FromErrno("shm_open " + seg->shm_name_, errno);
    if (OfdLock(seg->fd_, F_WRLCK, kAdminByte, /*wait=*/true) != 0) {
      return Status::FromErrno("lock " + seg->shm_name_, errno);
    }
    // The object may have been removed (by the last user leaving, or by a cleanup) between
    // our open and our lock; then the name refers to another object or to none: start over.
    struct stat by_fd {
    }, by_name{};
    const std::string path = std::string(kShmDir) + seg->shm_name_;
    const bool same = fstat(seg->fd_, &by_fd) == 0 && stat(path.c_str(), &by_name) == 0 &&
                      by_fd.st_ino == by_name.st_ino && by_fd.st_dev == by_name.st_dev;
    if (same) break;
    close(seg->fd_);
    seg->fd_ = -1;
    if (Clock::now() > deadline) return Status::Timeout("could not attach to " + seg->shm_name_);
    std::this_thread::yield();
  }
  Status s = seg->AttachLocked(options);
  OfdLock(seg->fd_, F_UNLCK, kAdminByte, false);
  if (!s.ok()) {
    // Not a member: the destructor must not treat us as one.
    close(seg->fd_);
    seg->fd_ = -1;
    return s;
  }
  return seg;
}

Status Segment::AttachLocked(const ShmOptions& options) {
  struct stat st {};
  EASYSYNC_RETURN_IF_ERROR(CheckOwnership(fd_, shm_name_, &st));
  EASYSYNC_ASSIGN_OR_RETURN(const bool alive, OthersHoldLock(fd_, kAliveByte));
  if (!alive) {
    if (st.st_size > 0) {
      std::fprintf(stderr, "easysync: %s was left by processes that are gone; rebuilding it\n",
                   shm_name_.c_str());
      RemoveExtents();
      if (ftruncate(fd_, 0) != 0) return Status::FromErrno("ftruncate " + shm_name_, errno);
    }
    EASYSYNC_RETURN_IF_ERROR(Initialize(options));
  } else {
    EASYSYNC_RETURN_IF_ERROR(Validate(static_cast<uint64_t>(st.st_size)));
  }
  if (OfdLock(fd_, F_RDLCK, kAliveByte, false) != 0) {
    return Status::FromErrno("lock (alive) " + shm_name_, errno);
  }
  return Status::Ok();
}

Status Segment::Initialize(const ShmOptions& options) {
  max_attributes_ = options.max_attributes;
  slots_offset_ = AlignUp(sizeof(SegmentHeader), 4096);
  arena_offset_ = AlignUp(slots_offset_ + uint64_t{max_attributes_} * sizeof(Slot), 4096);
  arena_bytes_ = AlignUp(options.arena_bytes, 4096);
  const uint64_t total = arena_offset_ + arena_bytes_;
  // tmpfs allocates pages on first touch: an unused arena costs nothing.
  if (ftruncate(fd_, static_cast<off_t>(total)) != 0) {
    return Status::FromErrno("ftruncate " + shm_name_, errno);
  }
  EASYSYNC_ASSIGN_OR_RETURN(map_, MapFd(fd_, total));
  auto* h = new (map_.base()) SegmentHeader();
  h->magic = kSegmentMagic;
  h->layout_version = kLayoutVersion;
  h->segment_bytes = total;
  h->max_attributes = max_attributes_;
  h->slot_bytes = sizeof(Slot);
  h->slots_offset = slots_offset_;
  h->arena_offset = arena_offset_;
  h->arena_bytes = arena_bytes_;
  std::snprintf(h->cluster, sizeof(h->cluster), "%s", cluster_.c_str());
  h->state.store(kStateReady, std::memory_order_release);
  return Status::Ok();
}

Status Segment::Validate(uint64_t file_bytes) {
  const std::string what = "segment " + shm_name_;
  if (file_bytes < sizeof(SegmentHeader)) {
    return Status::Corruption(what + " is truncated: " + std::to_string(file_bytes) +
                              " bytes, less than its header");
  }
  // Map what the file holds now, then check the header's claims against it.
  EASYSYNC_ASSIGN_OR_RETURN(map_, MapFd(fd_, file_bytes));
  const SegmentHeader& h = header();
  if (h.magic != kSegmentMagic) return Status::Corruption(what + " has a bad magic number");
  if (h.layout_version != kLayoutVersion) {
    return Status::Corruption(what + " has layout version " + std::to_string(h.layout_version) +
                              ", this library reads version " + std::to_string(kLayoutVersion));
  }
  if (h.state.load(std::memory_order_acquire) != kStateReady) {
    return Status::Corruption(what + " was never finished by its creator");
  }
  if (h.slot_bytes != sizeof(Slot) || h.max_attributes == 0 || h.max_attributes > (1u << 20)) {
    return Status::Corruption(what + " has an invalid directory description");
  }
  const uint64_t slots_offset = AlignUp(sizeof(SegmentHeader), 4096);
  const uint64_t arena_offset =
      AlignUp(slots_offset + uint64_t{h.max_attributes} * sizeof(Slot), 4096);
  if (h.slots_offset != slots_offset || h.arena_offset != arena_offset ||
      h.arena_bytes > (uint64_t{1} << 36) || h.segment_bytes != arena_offset + h.arena_bytes) {
    return Status::Corruption(what + " has inconsistent offsets in its header");
  }
  if (file_bytes < h.segment_bytes) {
    return Status::Corruption(what + " is truncated: " + std::to_string(file_bytes) +
                              " bytes, its header says " + std::to_string(h.segment_bytes));
  }
  max_attributes_ = h.max_attributes;
  slots_offset_ = slots_offset;
  arena_offset_ = arena_offset;
  arena_bytes_ = h.arena_bytes;
  return Status::Ok();
}

Segment::~Segment() {
  if (fd_ < 0) return;
  OfdLock(fd_, F_WRLCK, kAdminByte, true);
  OfdLock(fd_, F_UNLCK, kAliveByte, false);
  auto alive = OthersHoldLock(fd_, kAliveByte);
  if (alive.ok() && !alive.value()) {
    RemoveExtents();
    shm_unlink(shm_name_.c_str());
  }
  OfdLock(fd_, F_UNLCK, kAdminByte, false);
  close(fd_);
}

std::byte* Segment::ArenaBytes(uint64_t offset, uint64_t len) const {
  if (offset < arena_offset_ || offset - arena_offset_ > arena_bytes_ ||
      len > arena_bytes_ - (offset - arena_offset_)) {
    return nullptr;
  }
  return map_.base() + offset;
}

std::optional<uint64_t> Segment::AllocateArena(uint64_t len) {
  len = AlignUp(len, kAlign);
  auto& used = header().arena_used;
  uint64_t cur = used.load(std::memory_order_relaxed);
  do {
    if (cur > arena_bytes_ || len > arena_bytes_ - cur) return std::nullopt;
  } while (!used.compare_exchange_weak(cur, cur + len, std::memory_order_relaxed));
  return arena_offset_ + cur;
}

std::string Segment::ExtentName(uint32_t index, uint64_t gen) const {
  return shm_name_ + "." + std::to_string(index) + "." + std::to_string(gen);
}

Result<Mapping> Segment::CreateExtent(const std::string& name, uint64_t bytes) {
  int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EEXIST) {
    // Left by a writer killed between creating it and publishing it.
    shm_unlink(name.c_str());
    fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  }
  if (fd < 0) return Status::FromErrno("shm_open " + name, errno);
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    close(fd);
    shm_unlink(name.c_str());
    return Status::FromErrno("ftruncate " + name + " to " + std::to_string(bytes) + " bytes", err);
  }
  auto m = MapFd(fd, bytes);
  close(fd);
  if (!m.ok()) shm_unlink(name.c_str());
  return m;
}

Result<Mapping> Segment::OpenExtent(const std::string& name) {
  int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == ENOENT) return Status::NotFound(name + " does not exist");
    return Status::FromErrno("shm_open " + name, errno);
  }
  struct stat st {};
  Status s = CheckOwnership(fd, name, &st);
  if (!s.ok()) {
    close(fd);
    return s;
  }
  if (st.st_size <= 0) {
    close(fd);
    return Status::Corruption(name + " is empty");
  }
  auto m = MapFd(fd, static_cast<uint64_t>(st.st_size));
  close(fd);
  return m;
}

void Segment::RemoveExtents() const {
  // Extents are named "<segment>.<slot>.<gen>"; cluster names have no '.', so this prefix
  // matches only this cluster's extents.
  const std::string prefix = shm_name_.substr(1) + ".";
  DIR* dir = opendir(kShmDir);
  if (dir == nullptr) return;
  while (dirent* e = readdir(dir)) {
    if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) {
      shm_unlink(("/" + std::string(e->d_name)).c_str());
    }
  }
  closedir(dir);
}

}  // namespace easysync::shm
