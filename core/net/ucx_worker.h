// The UCX layer: a ucp context + worker driven by a progress thread (and by callers that find
// it free), endpoints with peer error handling, a listener, and whole-frame active messages.
//
// Threading: one thread at a time drives the worker, the one holding its drive lock: the
// progress thread, or a caller that found the worker free (RunOrPost, TryProgress), which then
// acts as the progress thread for that call. Create(), Listen() and Connect() run on the
// caller's thread before Start(). Everything else that touches UCX, and every Handler method,
// runs while the lock is held; other threads hand work over with Post(). "Progress thread"
// below means whichever thread drives the worker.
//
// Waiting: the progress thread keeps polling for `spin` after the last activity, yielding its
// CPU between passes (so a spinning thread never starves the one that has the next step to
// run when CPUs are few), then arms the worker (ucp_worker_arm) and sleeps in poll() on its
// event fd and on an eventfd that Post() rings, so an idle process costs no CPU and steady
// traffic no wake-ups. It sleeps at once when a yield shows a thread computing on its CPU
// (YieldQuickly): the event that wakes it then preempts that thread (a relay's, see
// UcxOptions::relay, for a second after that, and with a short time slice). A caller that
// sends or waits drives the worker itself when it is free, so a message leaves and arrives
// without handing over to another thread.
#pragma once

#include <ucp/api/ucp.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "easysync/status.h"
#include "net/protocol.h"

namespace easysync::net {

// A UCX status as a Status naming the call and where it was made.
Status UcxError(ucs_status_t s, const char* what, const char* file, int line);
#define EASYSYNC_UCX_CHECK(call)                                                                 \
  do {                                                                                           \
    const ucs_status_t _es_ucs = (call);                                                         \
    if (_es_ucs != UCS_OK) return ::easysync::net::UcxError(_es_ucs, #call, __FILE__, __LINE__); \
  } while (0)

// What UCX can use on this machine: "tcp (eth0 lo), posix (memory), ...", for error messages.
std::string AvailableTransports();

// A negative spin means: choose (kDefaultSpin). Spinning threads yield between polls, so they
// give way to any thread with work on the same CPU.
inline constexpr std::chrono::microseconds kDefaultSpin{50};

// The longest first part of a frame sent apart from its tail (UcxWorker::SendSplit) that a
// receiver accepts: a WRITE's headers, not a value.
inline constexpr size_t kMaxFrameHead = 1024;
std::chrono::nanoseconds ResolveSpin(std::chrono::nanoseconds requested);

// Yields the CPU once; false when that took long enough to show a thread that computes on the
// same CPU (it ran a whole time slice): then a spinning thread should sleep instead, since
// only a thread that wakes up preempts the one computing (a runnable one waits for its slice
// to end, milliseconds), while spinning threads yield to each other within microseconds.
bool YieldQuickly();

// Asks the scheduler for the shortest time slice (0.1 ms) for the calling thread, keeping its
// nice value; threads it starts get the default again. On Linux 6.12 and later a thread that
// wakes then runs before one that computes on the same CPU with the default slice. Whether the
// request was taken (false on kernels and systems without it: nothing changed).
bool AskForShortSlices();
inline constexpr uint64_t kShortSliceNs = 100'000;

struct UcxOptions {
  std::string transports;  // UCX_TLS syntax ("tcp", "shm,tcp", "rc,ud"); empty: UCX's default
  std::chrono::nanoseconds spin{-1};  // see ResolveSpin
  uint64_t max_frame_bytes = kDefaultMaxMessageBytes;
  std::string who = "easysync";  // log prefix
  // For a relay (the hub), whose every wake-up someone waits on while the machine's CPUs are
  // busy computing (clients encoding and decoding segments): the progress thread asks for
  // short time slices (AskForShortSlices), and once a yield showed a thread computing on its
  // CPU it sleeps at once, without spinning, for a second (each later yield would wait out
  // that thread's time slice). Clients keep spinning after every wake-up: a client's
  // slow yield is mostly a passing one (a ping-pong whose two ends share a CPU), and short
  // slices there cost it more than they gain.
  bool relay = false;
};

class UcxWorker {
 public:
  class Handler {
   public:
    virtual ~Handler() = default;
    // A whole frame from ep (nullptr when the sender did not identify itself); an empty frame
    // for one that is malformed at this layer (a head longer than kMaxFrameHead).
    virtual void OnFrame(ucp_ep_h ep, Frame frame) = 0;
    // A frame over max_frame_bytes, refused before its bytes were received.
    virtual void OnOversize(ucp_ep_h ep, size_t bytes) = 0;
    virtual void OnEndpointError(ucp_ep_h ep, ucs_status_t status) = 0;
    virtual void OnConnectRequest(ucp_conn_request_h) {}
    // After each progress pass; returns how long the thread may sleep (-1: until woken).
    virtual int OnIdle() { return -1; }
  };

  static Result<std::unique_ptr<UcxWorker>> Create(const UcxOptions& options, Handler* handler);
  ~UcxWorker();  // stops the thread, closes endpoints, destroys the worker

  // "UCX 1.13.1, transports tcp, CUDA memory no" (what UCX resolved, for the startup log).
  const std::string& description() const { return description_; }
  // Whether this UCX build moves CUDA device memory itself (run-time feature detection).
  bool cuda_memory() const { return cuda_memory_; }

  Status Listen(const std::string& bind, uint16_t port);
  uint16_t listen_port() const { return listen_port_; }
  Result<ucp_ep_h> Connect(const std::string& host, uint16_t port);

  void Start();
  // Stops and joins the progress thread (idempotent). Handler calls after this run only on
  // the destroying thread, while the destructor closes endpoints.
  void Stop();
  // Runs fn on the progress thread. Thread-safe.
  void Post(std::function<void()> fn);
  // Runs fn on this thread, as the progress thread, when the progress thread runs, no other
  // thread drives the worker and nothing posted is waiting (so fn keeps its place after
  // earlier posts); else posts it. fn must not take a lock that a handler takes while the
  // caller holds it. Thread-safe.
  void RunOrPost(std::function<void()> fn);
  // One progress pass on this thread (posted work, UCX, watched fds) when no other thread
  // drives the worker: Handler methods may run here. Whether anything happened. The caller
  // holds no lock that a handler takes. Thread-safe; false before Start() and once Stop() began.
  bool TryProgress();
  // When UCX (or a watched fd) last made progress: bytes moved, a message or completion; not
  // when only posted work ran (a send is no sign of the peer's life). Progress thread only:
  // a large message still arriving counts as a live peer before any frame completes.
  std::chrono::steady_clock::time_point last_activity() const { return last_activity_; }

  // Also watches `fd` (non-blocking, e.g. a UDP socket): on_ready runs on the progress
  // thread after each progress pass, and when poll() finds fd readable; it drains what is
  // there and returns whether it did anything. Progress-thread only (or before Start).
  void WatchFd(int fd, std::function<bool()> on_ready);
  void UnwatchFd(int fd);

  // Progress-thread only (or before Start):
  Result<ucp_ep_h> Accept(ucp_conn_request_h request, std::string* peer);
  void RejectRequest(ucp_conn_request_h request) { ucp_listener_reject(listener_, request); }
  // Sends a frame; done (optional) gets the completion status.
  void Send(ucp_ep_h ep, std::shared_ptr<const Frame> frame,
            std::function<void(ucs_status_t)> done = {});
  // Sends the frame head ++ tail where the tail stays where it is, in memory of tail_type
  // (device memory when cuda_memory()): the head travels as the active message's header, the
  // tail as its data, and the receiver gets one frame. The tail must stay unchanged until done
  // runs. REQUIRES: head->size() <= max_frame_head().
  void SendSplit(ucp_ep_h ep, std::shared_ptr<const Frame> head, const void* tail,
                 size_t tail_bytes, ucs_memory_type_t tail_type,
                 std::function<void(ucs_status_t)> done = {});
  // The longest head SendSplit takes: what UCX allows in an active message header, at most
  // kMaxFrameHead (what receivers accept).
  size_t max_frame_head() const { return max_frame_head_; }
  // Whether ep has an RDMA lane (rc, dc: verbs transports that can read GPU memory from the
  // NIC where GPUDirect RDMA is set up), from UCX's own description of the endpoint.
  // Progress-thread only.
  bool HasRdmaLane(ucp_ep_h ep) const;
  // Calls done once everything sent on ep has reached the peer (or failed).
  void Flush(ucp_ep_h ep, std::function<void(ucs_status_t)> done);
  // Closes an endpoint by force: what is still in flight on it is dropped (Flush first to
  // deliver it).
  void Close(ucp_ep_h ep);
  using SendDone = std::function<void(ucs_status_t)>;
  // For a clean shutdown: runs send_last on the progress thread, which sends the peers a last
  // frame (a goodbye), each with `sent` as its completion, and returns how many it sent; then
  // waits until those sends completed (the frames were handed to the transport), at most
  // `limit`. Thread-safe; not on the progress thread, and before Stop() (it returns at once
  // otherwise). It does not flush the endpoints: UCX 1.13's TCP transport aborted a hub that
  // flushed a client which had reconnected while the hub was stopped (SIGSTOP).
  void SendLast(const std::function<size_t(const SendDone& sent)>& send_last,
                std::chrono::milliseconds limit);

 private:
  UcxWorker(const UcxOptions& options, Handler* handler) : options_(options), handler_(handler) {}
  Status Init();
  void Loop();
  bool RunPosted();
  // One pass: posted work, ucp_worker_progress until idle, watched fds. REQUIRES: drive_mu_.
  bool Pass();
  // After a caller drove the worker (drive_mu_ just released): wakes the progress thread when
  // UCX still owns a send that only progress completes and the thread sleeps.
  void AfterDrivenHere(bool handled);
  // One active message: header (nullptr: none), then size bytes of data of memory type
  // `type`; keep lives until the send completes.
  void SendAm(ucp_ep_h ep, const Frame* head, const void* data, size_t size, ucs_memory_type_t type,
              std::shared_ptr<const Frame> keep, std::function<void(ucs_status_t)> done);
  static ucs_status_t OnAm(void* arg, const void* header, size_t header_length, void* data,
                           size_t length, const ucp_am_recv_param_t* param);
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);
  // Hands ep's frames that have arrived whole to the handler, in the order they were sent.
  void DeliverInOrder(ucp_ep_h ep);
  static void OnConn(ucp_conn_request_h request, void* arg);
  void Drain(std::chrono::milliseconds limit);
  // Before the listener is destroyed: nothing more reaches it or the connections it accepted,
  // and what had arrived is handled (at most `limit`). REQUIRES: the progress thread stopped.
  void QuietListener(std::chrono::milliseconds limit);
  // ucp_ep_create with peer error handling added to `ep`; the endpoint is tracked.
  Result<ucp_ep_h> CreateEndpoint(ucp_ep_params_t* ep);

  UcxOptions options_;
  Handler* handler_;
  std::string description_;
  bool cuda_memory_ = false;
  size_t max_frame_head_ = 0;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_listener_h listener_ = nullptr;
  uint16_t listen_port_ = 0;
  int worker_fd_ = -1;
  int post_fd_ = -1;
  std::vector<ucp_ep_h> endpoints_;  // open ones, closed (force) at destruction
  struct Watched {
    int fd;
    std::function<bool()> on_ready;
  };
  std::vector<Watched> watched_;
  std::atomic<int> inflight_{0};  // sends, receives and closes UCX still owns
  // A rendezvous frame's data arrives after later eager frames of the same endpoint have
  // been delivered: frames queue behind a rendezvous frame still arriving, so the handler
  // sees every endpoint's frames in the order they were sent (the protocol relies on it: a
  // DECLARED carrying a large value, then UPDATEs against it). Progress thread only.
  struct Arrival {
    Frame frame;
    bool ready = false;    // its data is all here
    bool dropped = false;  // its receive failed: skipped
  };
  std::unordered_map<ucp_ep_h, std::deque<std::shared_ptr<Arrival>>> arrivals_;
  // Held by whichever thread drives the worker (see Threading above).
  std::mutex drive_mu_;
  // A caller drove the worker since the progress thread's last pass: it passes again before it
  // arms the worker, since a send started there may need progress. Guarded by drive_mu_.
  bool driven_elsewhere_ = false;
  // A caller made a pass (TryProgress) since the progress thread's last one. Guarded by
  // drive_mu_.
  bool passed_elsewhere_ = false;
  bool handled_elsewhere_ = false;  // and one of those passes moved something
  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
  std::chrono::steady_clock::time_point last_activity_ = std::chrono::steady_clock::now();
  std::atomic<bool> sleeping_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> started_{false};  // Start() ran: callers may drive the worker
  std::thread thread_;
};

}  // namespace easysync::net
