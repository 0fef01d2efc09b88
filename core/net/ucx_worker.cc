// UCX context, worker, progress thread, listener and endpoints (see ucx_worker.h).
#include "net/ucx_worker.h"

#include <uct/api/uct.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

#include "net/tcp_filter.h"

namespace easysync::net {
namespace {

constexpr auto kSeqCst = std::memory_order_seq_cst;

// The value UCX resolved for UCX_TLS (the transports it may use).
std::string ResolvedTransports(ucp_config_t* config) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  if (f == nullptr) return "?";
  ucp_config_print(config, f, nullptr, UCS_CONFIG_PRINT_CONFIG);
  std::fclose(f);
  std::string all(buf, len);
  std::free(buf);
  const auto at = all.find("UCX_TLS=");
  if (at == std::string::npos) return "?";
  const auto end = all.find('\n', at);
  return all.substr(at + 8, end == std::string::npos ? std::string::npos : end - at - 8);
}

Result<sockaddr_storage> Resolve(const std::string& host, uint16_t port, bool passive,
                                 socklen_t* len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return Status::InvalidArgument("cannot resolve '" + host + "': " + gai_strerror(rc));
  }
  sockaddr_storage ss{};
  std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return ss;
}

std::string FormatAddress(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    port = ntohs(a->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

struct SendCtx {
  UcxWorker* worker;
  std::shared_ptr<const Frame> frame;
  std::function<void(ucs_status_t)> done;
  std::atomic<int>* inflight;
};

}  // namespace

Status UcxError(ucs_status_t s, const char* what, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  std::string msg = std::string(what) + ": " + ucs_status_string(s) + " (" +
                    (base ? base + 1 : file) + ":" + std::to_string(line) + ")";
  switch (s) {
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_INVALID_PARAM:
      return Status::InvalidArgument(msg);
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
      return Status::ResourceExhausted(msg);
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_ENDPOINT_TIMEOUT:
      return Status::Timeout(msg);
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_REJECTED:
    case UCS_ERR_BUSY:
      return Status::Unavailable(msg);
    default:
      return Status::IoError(msg);
  }
}

std::string AvailableTransports() {
  // UCT is below UCP: its components (tcp, posix, ib, ...) list the transports of each device.
  uct_component_h* components = nullptr;
  unsigned n = 0;
  if (uct_query_components(&components, &n) != UCS_OK) return "?";
  std::map<std::string, std::set<std::string>> found;  // transport -> devices
  for (unsigned c = 0; c < n; ++c) {
    uct_component_attr_t attr{};
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCE_COUNT;
    if (uct_component_query(components[c], &attr) != UCS_OK) continue;
    std::vector<uct_md_resource_desc_t> mds(attr.md_resource_count);
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCES;
    attr.md_resources = mds.data();
    if (uct_component_query(components[c], &attr) != UCS_OK) continue;
    for (const auto& md_desc : mds) {
      uct_md_config_t* config = nullptr;
      if (uct_md_config_read(components[c], nullptr, nullptr, &config) != UCS_OK) continue;
      uct_md_h md = nullptr;
      const ucs_status_t st = uct_md_open(components[c], md_desc.md_name, config, &md);
      uct_config_release(config);
      if (st != UCS_OK) continue;
      uct_tl_resource_desc_t* tls = nullptr;
      unsigned count = 0;
      if (uct_md_query_tl_resources(md, &tls, &count) == UCS_OK) {
        for (unsigned i = 0; i < count; ++i) found[tls[i].tl_name].insert(tls[i].dev_name);
        uct_release_tl_resource_list(tls);
      }
      uct_md_close(md);
    }
  }
  uct_release_component_list(components);
  std::string out;
  for (const auto& [tl, devices] : found) {
    out += (out.empty() ? "" : ", ") + tl + " (";
    bool first = true;
    for (const auto& d : devices) {
      out += (first ? "" : " ") + d;
      first = false;
    }
    out += ")";
  }
  return out.empty() ? "none" : out;
}

bool AskForShortSlices() {
#if defined(__linux__) && defined(SYS_sched_setattr)
  struct {  // struct sched_attr (linux/sched/types.h clashes with sched.h)
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
    uint32_t sched_util_min, sched_util_max;
  } attr{};
  attr.size = sizeof(attr);
  attr.sched_policy = SCHED_OTHER;
  attr.sched_flags = 1;  // SCHED_FLAG_RESET_ON_FORK: threads it starts get the default
  errno = 0;
  const int nice = getpriority(PRIO_PROCESS, 0);  // per thread on Linux
  if (errno != 0) return false;
  attr.sched_nice = nice;
  attr.sched_runtime = kShortSliceNs;
  return syscall(SYS_sched_setattr, 0, &attr, 0) == 0;
#else
  return false;
#endif
}

// How long a relay's progress thread stops spinning after a yield showed a thread computing
// on its CPU (UcxOptions::relay).
constexpr auto kContendedHold = std::chrono::seconds(1);

bool YieldQuickly() {
  // Spinning threads alone pass the CPU around within a few microseconds; a thread that
  // computes keeps it for its time slice (0.7 ms and more).
  constexpr auto kSlow = std::chrono::microseconds(100);
  const auto start = std::chrono::steady_clock::now();
  sched_yield();
  return std::chrono::steady_clock::now() - start < kSlow;
}

std::chrono::nanoseconds ResolveSpin(std::chrono::nanoseconds requested) {
  return requested.count() >= 0 ? requested : kDefaultSpin;
}

Result<std::unique_ptr<UcxWorker>> UcxWorker::Create(const UcxOptions& options, Handler* handler) {
  std::unique_ptr<UcxWorker> w(new UcxWorker(options, handler));
  w->options_.spin = ResolveSpin(options.spin);
  EASYSYNC_RETURN_IF_ERROR(w->Init());
  return w;
}

Status UcxWorker::Init() {
  ucp_config_t* config = nullptr;
  EASYSYNC_UCX_CHECK(ucp_config_read(nullptr, nullptr, &config));
  if (!options_.transports.empty()) {
    const ucs_status_t st = ucp_config_modify(config, "TLS", options_.transports.c_str());
    if (st != UCS_OK) {
      ucp_config_release(config);
      return Status::InvalidArgument("UCX transport list '" + options_.transports +
                                     "' is not valid: " + ucs_status_string(st));
    }
  }
  // UCX's memory-type cache learns of device memory from hooks on CUDA's allocation calls, and
  // misses allocations made through a statically linked CUDA runtime or the driver's entry
  // points: it then calls device memory host memory, whatever the send says, and TCP tried to
  // send() it (libucx-cu13 1.22 on an H100). Without the cache UCX asks the CUDA driver, which
  // costs nothing here: every send and receive names its memory type. The environment wins.
  if (std::getenv("UCX_MEMTYPE_CACHE") == nullptr) {
    (void)ucp_config_modify(config, "MEMTYPE_CACHE", "n");
  }
  const std::string transports = ResolvedTransports(config);
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  const ucs_status_t st = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (st != UCS_OK) {
    return Status::InvalidArgument("UCX has no device for the transports '" + transports + "' (" +
                                   ucs_status_string(st) +
                                   "); this machine has: " + AvailableTransports());
  }
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // drive_mu_
  EASYSYNC_UCX_CHECK(ucp_worker_create(context_, &wp, &worker_));
  EASYSYNC_UCX_CHECK(ucp_worker_get_efd(worker_, &worker_fd_));
  post_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (post_fd_ < 0) return Status::FromErrno("eventfd", errno);
  ucp_am_handler_param_t hp{};
  hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                  UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  hp.id = kAmId;
  hp.flags = UCP_AM_FLAG_WHOLE_MSG;
  hp.cb = &UcxWorker::OnAm;
  hp.arg = this;
  EASYSYNC_UCX_CHECK(ucp_worker_set_am_recv_handler(worker_, &hp));
  ucp_context_attr_t ca{};
  ca.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  if (ucp_context_query(context_, &ca) == UCS_OK) {
    cuda_memory_ = (ca.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  }
  ucp_worker_attr_t wa{};
  wa.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER;
  if (ucp_worker_query(worker_, &wa) == UCS_OK) {
    max_frame_head_ = std::min(wa.max_am_header, kMaxFrameHead);
  }
  description_ = std::string("UCX ") + ucp_get_version_string() + ", transports " + transports +
                 ", CUDA memory " + (cuda_memory_ ? "yes" : "no");
  return Status::Ok();
}

void UcxWorker::Stop() {
  if (thread_.joinable()) {
    stop_.store(true, kSeqCst);
    const uint64_t one = 1;
    (void)!write(post_fd_, &one, sizeof(one));
    thread_.join();
  }
  // A caller may be driving the worker still (its pass began before stop_): wait it out.
  std::lock_guard<std::mutex> drive(drive_mu_);
}

UcxWorker::~UcxWorker() {
  Stop();
  handler_ = nullptr;  // from here on, no callback reaches the handler
  RunPosted();         // closes the handler queued
  // By force (Close): a flush waits for the peer, and one that takes nothing (stalled) would
  // keep it pending past the drain below, where destroying the worker trips UCX's assertion
  // (a hub stopped with such a subscriber aborted). What is still in flight is dropped.
  for (ucp_ep_h ep : std::vector<ucp_ep_h>(endpoints_)) Close(ep);
  RunPosted();
  // Long enough for UCX to finish cancelling what a force-closed endpoint still had in
  // flight (a large rendezvous transfer under a sanitizer takes seconds): destroying the
  // worker before that trips UCX's own assertion.
  if (worker_ != nullptr) Drain(std::chrono::milliseconds(10000));
  if (listener_ != nullptr) {
    QuietListener(std::chrono::milliseconds(2000));
    ucp_listener_destroy(listener_);
  }
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
  if (post_fd_ >= 0) close(post_fd_);
}

void UcxWorker::QuietListener(std::chrono::milliseconds limit) {
  // UCX 1.13 frees its listener while connections it accepted may still be waiting for their
  // request, and the request that arrives after that calls into the freed listener (a hub
  // stopped while clients reconnected crashed in ucp_cm_server_conn_request_cb). So first no
  // packet reaches the listener or a connection it accepted, then UCX reads what had already
  // arrived (a whole request is refused here, handler_ being gone), and only then the
  // listener goes.
  const auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    bool quiet = true;
    for (int fd : TcpSocketsOnPort(listen_port_)) {
      DropWhatArrives(fd);
      if (Unread(fd) > 0) quiet = false;
    }
    while (ucp_worker_progress(worker_) != 0) {
    }
    if (quiet || std::chrono::steady_clock::now() >= until) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void UcxWorker::Drain(std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (inflight_.load() > 0 && std::chrono::steady_clock::now() < until) {
    ucp_worker_progress(worker_);
  }
}

Status UcxWorker::Listen(const std::string& bind, uint16_t port) {
  socklen_t len = 0;
  EASYSYNC_ASSIGN_OR_RETURN(sockaddr_storage ss, Resolve(bind, port, true, &len));
  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&ss);
  lp.sockaddr.addrlen = len;
  lp.conn_handler.cb = &UcxWorker::OnConn;
  lp.conn_handler.arg = this;
  const ucs_status_t st = ucp_listener_create(worker_, &lp, &listener_);
  if (st != UCS_OK) {
    // UCX reports a port in use as "Device is busy".
    return Status::Unavailable(
        "cannot listen on " + bind + ":" + std::to_string(port) + ": " +
        (st == UCS_ERR_BUSY ? std::string("the address is in use (another process listens there)")
                            : std::string(ucs_status_string(st))));
  }
  ucp_listener_attr_t la{};
  la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  EASYSYNC_UCX_CHECK(ucp_listener_query(listener_, &la));
  listen_port_ = la.sockaddr.ss_family == AF_INET6
                     ? ntohs(reinterpret_cast<const sockaddr_in6*>(&la.sockaddr)->sin6_port)
                     : ntohs(reinterpret_cast<const sockaddr_in*>(&la.sockaddr)->sin_port);
  return Status::Ok();
}

Result<ucp_ep_h> UcxWorker::Connect(const std::string& host, uint16_t port) {
  socklen_t len = 0;
  EASYSYNC_ASSIGN_OR_RETURN(sockaddr_storage ss, Resolve(host, port, false, &len));
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR;
  ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  ep.sockaddr.addr = reinterpret_cast<const sockaddr*>(&ss);
  ep.sockaddr.addrlen = len;
  return CreateEndpoint(&ep);
}

Result<ucp_ep_h> UcxWorker::CreateEndpoint(ucp_ep_params_t* ep) {
  // Peer error handling: a dead peer is reported to OnEpError, never waited on.
  ep->field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep->err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep->err_handler.cb = &UcxWorker::OnEpError;
  ep->err_handler.arg = this;
  ucp_ep_h h = nullptr;
  EASYSYNC_UCX_CHECK(ucp_ep_create(worker_, ep, &h));
  endpoints_.push_back(h);
  return h;
}

Result<ucp_ep_h> UcxWorker::Accept(ucp_conn_request_h request, std::string* peer) {
  ucp_conn_request_attr_t attr{};
  attr.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR;
  if (ucp_conn_request_query(request, &attr) == UCS_OK) *peer = FormatAddress(attr.client_address);
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST;
  ep.conn_request = request;
  return CreateEndpoint(&ep);
}

void UcxWorker::Start() {
  thread_ = std::thread([this] { Loop(); });
  started_.store(true, kSeqCst);
}

void UcxWorker::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    posted_.push_back(std::move(fn));
  }
  if (sleeping_.load(kSeqCst)) {
    const uint64_t one = 1;
    (void)!write(post_fd_, &one, sizeof(one));
  }
}

void UcxWorker::RunOrPost(std::function<void()> fn) {
  std::unique_lock<std::mutex> drive(drive_mu_, std::try_to_lock);
  if (drive.owns_lock() && !stop_.load(kSeqCst) && started_.load(kSeqCst)) {
    bool queued;
    {
      std::lock_guard<std::mutex> lock(post_mu_);
      queued = !posted_.empty();
    }
    if (!queued) {
      fn();
      driven_elsewhere_ = true;
      drive.unlock();
      AfterDrivenHere(false);
      return;
    }
  }
  if (drive.owns_lock()) drive.unlock();
  Post(std::move(fn));
}

bool UcxWorker::TryProgress() {
  std::unique_lock<std::mutex> drive(drive_mu_, std::try_to_lock);
  if (!drive.owns_lock() || stop_.load(kSeqCst) || !started_.load(kSeqCst)) return false;
  const bool busy = Pass();
  passed_elsewhere_ = true;
  handled_elsewhere_ = handled_elsewhere_ || busy;
  drive.unlock();
  AfterDrivenHere(busy);
  return busy;
}

void UcxWorker::AfterDrivenHere(bool handled) {
  // The progress thread sets sleeping_ under drive_mu_ before it arms the worker and clears
  // it after it takes drive_mu_ back: seen set here, it is in poll() (or about to be), armed
  // before this caller drove the worker. It must pass again when UCX still owns something
  // that only progress completes, or when this caller handled events (the handlers may have
  // left work that the progress thread's timers and posts would otherwise find only later).
  if ((handled || inflight_.load(kSeqCst) > 0) && sleeping_.load(kSeqCst)) {
    const uint64_t one = 1;
    (void)!write(post_fd_, &one, sizeof(one));
  }
}

bool UcxWorker::Pass() {
  const bool ran = RunPosted();
  bool moved = false;
  while (ucp_worker_progress(worker_) != 0) moved = true;
  for (size_t i = 0; i < watched_.size(); ++i) {
    if (watched_[i].on_ready()) moved = true;  // (may unwatch: index, not iterator)
  }
  // Work this process posted (a send, a retried request) is no sign of the peer's life.
  if (moved) last_activity_ = std::chrono::steady_clock::now();
  return ran || moved;
}

bool UcxWorker::RunPosted() {
  std::vector<std::function<void()>> work;
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    work.swap(posted_);
  }
  for (auto& fn : work) fn();
  return !work.empty();
}

void UcxWorker::Send(ucp_ep_h ep, std::shared_ptr<const Frame> frame,
                     std::function<void(ucs_status_t)> done) {
  const void* data = frame->data();
  const size_t size = frame->size();
  SendAm(ep, nullptr, data, size, UCS_MEMORY_TYPE_HOST, std::move(frame), std::move(done));
}

void UcxWorker::SendSplit(ucp_ep_h ep, std::shared_ptr<const Frame> head, const void* tail,
                          size_t tail_bytes, ucs_memory_type_t tail_type,
                          std::function<void(ucs_status_t)> done) {
  SendAm(ep, head.get(), tail, tail_bytes, tail_type, head, std::move(done));
}

void UcxWorker::SendAm(ucp_ep_h ep, const Frame* head, const void* data, size_t size,
                       ucs_memory_type_t type, std::shared_ptr<const Frame> keep,
                       std::function<void(ucs_status_t)> done) {
  auto* ctx = new SendCtx{this, std::move(keep), std::move(done), &inflight_};
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_REPLY;
  p.user_data = ctx;
  // Named, so that UCX needs not detect it (see MEMTYPE_CACHE in Init).
  p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  p.memory_type = type;
  p.cb.send = [](void* request, ucs_status_t status, void* user_data) {
    auto* c = static_cast<SendCtx*>(user_data);
    if (c->done && c->worker->handler_ != nullptr) c->done(status);
    c->inflight->fetch_sub(1);
    delete c;
    ucp_request_free(request);
  };
  const ucs_status_ptr_t r = ucp_am_send_nbx(ep, kAmId, head != nullptr ? head->data() : nullptr,
                                             head != nullptr ? head->size() : 0, data, size, &p);
  if (UCS_PTR_IS_PTR(r)) {
    inflight_.fetch_add(1);
    return;
  }
  if (ctx->done) ctx->done(UCS_PTR_STATUS(r));
  delete ctx;
}

bool UcxWorker::HasRdmaLane(ucp_ep_h ep) const {
  // ucp_ep_print_info names each lane's transport after its resource index ("lane[1]:
  // 2:rc_mlx5/mlx5_0:1.0 ..."); UCX 1.13 has no query for it.
  char* text = nullptr;
  size_t size = 0;
  FILE* f = open_memstream(&text, &size);
  if (f == nullptr) return false;
  ucp_ep_print_info(ep, f);
  std::fclose(f);
  bool rdma = false;
  if (text != nullptr) {
    const std::string info(text, size);
    std::free(text);
    rdma = info.find(":rc_") != std::string::npos || info.find(":dc_") != std::string::npos;
  }
  return rdma;
}

void UcxWorker::Flush(ucp_ep_h ep, std::function<void(ucs_status_t)> done) {
  auto* ctx = new SendCtx{this, nullptr, std::move(done), &inflight_};
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.user_data = ctx;
  p.cb.send = [](void* request, ucs_status_t status, void* user_data) {
    auto* c = static_cast<SendCtx*>(user_data);
    if (c->done && c->worker->handler_ != nullptr) c->done(status);
    c->inflight->fetch_sub(1);
    delete c;
    ucp_request_free(request);
  };
  const ucs_status_ptr_t r = ucp_ep_flush_nbx(ep, &p);
  if (UCS_PTR_IS_PTR(r)) {
    inflight_.fetch_add(1);
    return;
  }
  if (ctx->done) ctx->done(UCS_PTR_STATUS(r));
  delete ctx;
}

void UcxWorker::SendLast(const std::function<size_t(const SendDone& sent)>& send_last,
                         std::chrono::milliseconds limit) {
  if (!started_.load() || stop_.load() || !thread_.joinable() ||
      std::this_thread::get_id() == thread_.get_id()) {
    return;
  }
  struct Wait {
    std::mutex mu;
    std::condition_variable cv;
    bool ran = false;  // send_last ran
    size_t sent = 0;   // the sends it made
    size_t done = 0;   // those completed (some may complete inside send_last)
  };
  auto w = std::make_shared<Wait>();
  Post([w, send_last] {
    const size_t sent = send_last([w](ucs_status_t) {
      std::lock_guard<std::mutex> lock(w->mu);
      ++w->done;
      w->cv.notify_all();
    });
    std::lock_guard<std::mutex> lock(w->mu);
    w->ran = true;
    w->sent = sent;
    w->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(w->mu);
  w->cv.wait_for(lock, limit, [&] { return w->ran && w->done >= w->sent; });
}

void UcxWorker::Close(ucp_ep_h ep) {
  auto it = std::find(endpoints_.begin(), endpoints_.end(), ep);
  if (it == endpoints_.end()) return;  // closed already
  endpoints_.erase(it);
  // Deferred: UCX callbacks (errors, completions) must not close endpoints themselves.
  auto close = [this, ep] {
    ucp_request_param_t p{};
    p.op_attr_mask =
        UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    p.user_data = &inflight_;
    p.cb.send = [](void* request, ucs_status_t, void* user_data) {
      static_cast<std::atomic<int>*>(user_data)->fetch_sub(1);
      ucp_request_free(request);
    };
    const ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &p);
    if (UCS_PTR_IS_PTR(r)) inflight_.fetch_add(1);
  };
  std::lock_guard<std::mutex> lock(post_mu_);
  posted_.push_back(std::move(close));
}

ucs_status_t UcxWorker::OnAm(void* arg, const void* header, size_t header_length, void* data,
                             size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxWorker*>(arg);
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  Handler* h = self->handler_;
  if (h == nullptr) return rndv ? UCS_ERR_CANCELED : UCS_OK;  // shutting down
  ucp_ep_h ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : nullptr;
  // A frame is the AM header (the head of a frame sent with SendSplit, else empty) followed
  // by the AM data.
  if (header_length > kMaxFrameHead) {  // no sender puts a value there: malformed
    h->OnFrame(ep, Frame());
    return rndv ? UCS_ERR_INVALID_PARAM : UCS_OK;
  }
  const size_t max = self->options_.max_frame_bytes;
  if (header_length > max || length > max - header_length) {
    h->OnOversize(ep, header_length + length);
    return rndv ? UCS_ERR_MESSAGE_TRUNCATED : UCS_OK;
  }
  const auto* head = static_cast<const std::byte*>(header);
  auto queued = self->arrivals_.find(ep);
  if (!rndv) {
    const auto* b = static_cast<const std::byte*>(data);
    Frame frame;
    frame.reserve(header_length + length);
    frame.insert(frame.end(), head, head + header_length);
    frame.insert(frame.end(), b, b + length);
    if (queued == self->arrivals_.end()) {
      h->OnFrame(ep, std::move(frame));
    } else {  // behind a rendezvous frame still arriving
      auto a = std::make_shared<Arrival>();
      a->frame = std::move(frame);
      a->ready = true;
      queued->second.push_back(std::move(a));
    }
    return UCS_OK;
  }
  auto arrival = std::make_shared<Arrival>();
  arrival->frame.resize(header_length + length);
  if (header_length != 0) std::memcpy(arrival->frame.data(), head, header_length);
  self->arrivals_[ep].push_back(arrival);
  struct RecvCtx {
    UcxWorker* worker;
    ucp_ep_h ep;
    std::shared_ptr<Arrival> arrival;
  };
  auto* ctx = new RecvCtx{self, ep, arrival};
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  p.memory_type = UCS_MEMORY_TYPE_HOST;
  p.user_data = ctx;
  p.cb.recv_am = [](void* request, ucs_status_t status, size_t, void* user_data) {
    auto* c = static_cast<RecvCtx*>(user_data);
    c->arrival->ready = true;
    c->arrival->dropped = status != UCS_OK;
    c->worker->inflight_.fetch_sub(1);
    c->worker->DeliverInOrder(c->ep);
    delete c;
    ucp_request_free(request);
  };
  const ucs_status_ptr_t r =
      ucp_am_recv_data_nbx(self->worker_, data, arrival->frame.data() + header_length, length, &p);
  if (UCS_PTR_IS_PTR(r)) {
    self->inflight_.fetch_add(1);
  } else {
    arrival->ready = true;
    arrival->dropped = r != nullptr;  // an error status
    delete ctx;
    self->DeliverInOrder(ep);
  }
  return UCS_INPROGRESS;
}

void UcxWorker::DeliverInOrder(ucp_ep_h ep) {
  for (;;) {
    auto it = arrivals_.find(ep);
    if (it == arrivals_.end()) return;
    auto& queue = it->second;
    if (queue.empty()) {
      arrivals_.erase(it);
      return;
    }
    if (!queue.front()->ready) return;
    std::shared_ptr<Arrival> a = std::move(queue.front());
    queue.pop_front();
    if (queue.empty()) arrivals_.erase(it);  // before the handler, which may receive more
    if (!a->dropped && handler_ != nullptr) handler_->OnFrame(ep, std::move(a->frame));
  }
}

void UcxWorker::OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* self = static_cast<UcxWorker*>(arg);
  if (self->handler_ == nullptr) return;
  std::lock_guard<std::mutex> lock(self->post_mu_);
  self->posted_.push_back([self, ep, status] {
    if (self->handler_ != nullptr) self->handler_->OnEndpointError(ep, status);
  });
}

void UcxWorker::OnConn(ucp_conn_request_h request, void* arg) {
  auto* self = static_cast<UcxWorker*>(arg);
  if (self->handler_ == nullptr) {
    ucp_listener_reject(self->listener_, request);
    return;
  }
  self->handler_->OnConnectRequest(request);
}

void UcxWorker::WatchFd(int fd, std::function<bool()> on_ready) {
  watched_.push_back(Watched{fd, std::move(on_ready)});
}

void UcxWorker::UnwatchFd(int fd) {
  std::erase_if(watched_, [fd](const Watched& w) { return w.fd == fd; });
}

void UcxWorker::Loop() {
  // Takes drive_mu_, yielding while a caller holds it for a send or a short pass, and
  // sleeping on it when the caller's pass is a long one (a large value to apply).
  auto take = [this] {
    for (int i = 0; i < 64; ++i) {
      if (drive_mu_.try_lock()) return;
      sched_yield();
    }
    drive_mu_.lock();
  };
  if (options_.relay) (void)AskForShortSlices();
  auto last = std::chrono::steady_clock::now();
  // Until when this thread sleeps as soon as it has nothing to do (kContendedHold).
  auto contended_until = last - kContendedHold;
  std::vector<pollfd> fds;
  take();
  while (!stop_.load(std::memory_order_relaxed)) {
    // While a caller makes the passes, this thread only keeps its timers, at the cost of a
    // yield: a pass of its own would delay the caller's on a shared CPU. Only passes in
    // which UCX or a watched fd moved something count as activity (Pass; last_activity()
    // tells the keep-alive the peer is alive).
    bool busy =
        std::exchange(passed_elsewhere_, false) ? std::exchange(handled_elsewhere_, false) : Pass();
    busy = std::exchange(driven_elsewhere_, false) || busy;
    const int idle_ms = handler_->OnIdle();
    if (busy) {
      last = std::chrono::steady_clock::now();
      continue;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= contended_until && now - last < options_.spin) {
      drive_mu_.unlock();
      if (!YieldQuickly()) {
        // A relay stops spinning for kContendedHold; others until the next wake-up.
        contended_until = options_.relay ? std::chrono::steady_clock::now() + kContendedHold
                                         : std::chrono::steady_clock::time_point::max();
      }
      take();
      continue;
    }
    sleeping_.store(true, kSeqCst);
    bool pending;
    {
      std::lock_guard<std::mutex> lock(post_mu_);
      pending = !posted_.empty();
    }
    if (pending || stop_.load(kSeqCst)) {
      sleeping_.store(false, kSeqCst);
      continue;
    }
    const ucs_status_t st = ucp_worker_arm(worker_);
    fds.assign({{worker_fd_, POLLIN, 0}, {post_fd_, POLLIN, 0}});
    for (const Watched& w : watched_) fds.push_back({w.fd, POLLIN, 0});
    drive_mu_.unlock();
    if (st == UCS_OK) poll(fds.data(), fds.size(), idle_ms);
    take();
    sleeping_.store(false, kSeqCst);
    uint64_t drained;
    (void)!read(post_fd_, &drained, sizeof(drained));
    last = std::chrono::steady_clock::now();
    if (!options_.relay) contended_until = last - kContendedHold;  // spin again after a wake-up
  }
  drive_mu_.unlock();
}

}  // namespace easysync::net
