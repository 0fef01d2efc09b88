// net-tensor: one training step's update of a large tensor (default 256 MiB of bfloat16),
// synced from client A through the hub to client B, against the whole tensor synced the same
// way and a torch.distributed broadcast (gloo) of it between two processes, all on the same
// link in the same run.
//
// Links: loopback, and loopback shaped to 10 and 1 Gbit/s by a token bucket (tc tbf: the
// kernel here has no netem) in a network namespace of its own, which needs root. Everything of
// one link runs in one forked process and its children: first the gloo pair, then the hub, B
// and A. EasySync's value crosses the link twice (A -> hub, hub -> B) as it would cross the
// hub's NIC twice on a real network; gloo's crosses it once.
//
// Timing: A puts the value's XXH3 in memory it shares with B, reads CLOCK_MONOTONIC and
// writes (Synced<Tensor>::set). B waits for the new version (wait_for_change), reads it (get)
// and stores its own clock reading: the difference is the sync time (one machine, one clock).
// B then checks the XXH3 of what it read, outside the timing, as the gloo receiver checks its
// copy. Each repetition writes the step's base (untimed), the step's new value (delta_s:
// EasySync may send it as a codec delta), then a tensor of random bits (full_s: no codec
// shrinks it, so the whole tensor crosses); each timed write starts 0.5 s after the write
// before it was read, once the hub has applied that one to its own copy (kSettle). wire_bytes is
// what A's client sent for the delta write (Stats::bytes_sent); codec_bytes is what codec::Encoder
// makes of the same pair here.
//
// --device cuda keeps A's tensor in GPU memory (copied there before each timed write, untimed):
// the delta is computed on the device and only changed blocks cross PCIe. --device host-twin
// runs that same path on the CUDA kernels' host twins (a dry run without a GPU, and a profile of
// the path's host side). B reads into host memory either way. With either, each repetition also
// writes the step's weights as whole values (A's device base forgotten first, as after another
// writer): whole_s with NetOptions::device_direct kAlways (from device memory straight to UCX,
// raw, where UCX moves CUDA memory: whole_in_place; host-twin takes that path with UCX reading
// host memory), whole_staged_s with kNever (staged through the host and encoded there).
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <memory>
#include <new>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "bench.h"
#include "codec_bench.h"
#include "easysync/codec.h"
#include "easysync/net.h"
#include "easysync/synced.h"
#include "easysync/tensor.h"
#include "hub_process.h"
#include "net/net_client.h"
#include "proc_util.h"
#include "stats_util.h"

#if EASYSYNC_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace easysync::bench {
namespace {

constexpr int64_t kDefaultMib = 256;
constexpr int kDefaultReps = 3;
// How long A waits for B to hold one value, and the clients for the hub's answer: 256 MiB
// cross a 1 Gbit/s link twice in about 4.3 s.
constexpr auto kValueTimeout = std::chrono::seconds(120);
// The pause before each timed write: the hub applies a write to its own copy once it has
// relayed it, in the background, and the untimed write before a timed one (the step's base
// after a random tensor) is a whole value, a pass of ~0.1-0.2 s over 256 MiB. In training the
// write before a step's is the previous step's delta, applied long before the next: so here.
constexpr auto kSettle = std::chrono::milliseconds(500);
constexpr const char* kLinks[] = {"loopback", "10gbit", "1gbit"};  // shaped: tc rate syntax
constexpr const char* kSyntheticStep = "rl-bf16";

struct Flags {
  bool json = false;
  int reps = kDefaultReps;
  int64_t mib = kDefaultMib;
  std::string steps_dir;  // empty: the synthetic step
  DType dtype = DType::kBFloat16;
  std::string python = "python3";
  std::vector<std::string> links = {std::begin(kLinks), std::end(kLinks)};
  bool links_given = false;
  std::string host;  // empty: start our own hub
  uint16_t port = 0;
  std::string token;
  std::string transports = "tcp";
  std::string device = "host";  // host, cuda, host-twin: where A's tensor lives
  int client_cpus = 0;          // > 0: CPUs for each client (ChoosePlacement)
};

bool Shaped(const std::string& link) { return link != "loopback" && link != "external"; }

// ---- the step

// Repeats v's bytes (then cuts them) to `bytes`.
void TileTo(size_t bytes, std::vector<uint8_t>* v) {
  const size_t n = v->size();
  v->resize(bytes);
  for (size_t at = n; at < bytes; at += n) {
    std::memcpy(v->data() + at, v->data(), std::min(n, bytes - at));
  }
}

// The base/new pairs the repetitions sync: the synthetic step, or the consecutive snapshot
// pairs of --steps DIR (repetition k takes pair k mod count), each tiled to the tensor size:
// the snapshot's bytes repeated, so the changes keep their density and pattern.
class StepSource {
 public:
  bool Init(const Flags& f, std::string* error) {
    if (!f.steps_dir.empty()) dtype_ = f.dtype;
    bytes_ = (static_cast<size_t>(f.mib) << 20) / DTypeSize(dtype_) * DTypeSize(dtype_);
    if (f.steps_dir.empty()) {
      MakeSyntheticPair(kSyntheticStep, &pair_, bytes_);
      return true;
    }
    label_ = f.steps_dir;
    return ListSteps(f.steps_dir, &files_, error);
  }
  // The tensor's size: --mib, in whole elements.
  size_t bytes() const { return bytes_; }
  DType dtype() const { return dtype_; }
  const std::string& label() const { return label_; }
  // How many different pairs there are.
  size_t count() const { return files_.empty() ? 1 : files_.size() - 1; }

  // The pair of repetition k; null (with *error) when its files cannot be used.
  const TensorPair* Get(int k, std::string* error) {
    const size_t i = static_cast<size_t>(k) % count();
    if (files_.empty() || loaded_ == i) return &pair_;
    pair_.dtype = dtype_;
    pair_.label = files_[i].filename().string() + "->" + files_[i + 1].filename().string();
    if (!ReadFile(files_[i], &pair_.base, error) || !ReadFile(files_[i + 1], &pair_.cur, error)) {
      return nullptr;
    }
    const size_t esize = DTypeSize(dtype_);
    if (pair_.base.size() != pair_.cur.size() || pair_.base.empty() ||
        pair_.base.size() % esize != 0) {
      *error = pair_.label + ": not two files of the same size in whole " +
               std::string(DTypeName(dtype_)) + " elements";
      return nullptr;
    }
    TileTo(bytes_, &pair_.base);
    TileTo(bytes_, &pair_.cur);
    loaded_ = i;
    return &pair_;
  }

 private:
  size_t bytes_ = 0;
  DType dtype_ = DType::kBFloat16;
  std::string label_ = kSyntheticStep;
  std::vector<std::filesystem::path> files_;
  size_t loaded_ = std::numeric_limits<size_t>::max();
  TensorPair pair_;
};

codec::TensorBytes Bytes(DType dtype, const std::vector<uint8_t>& v) {
  return {dtype, v.size() / DTypeSize(dtype), v.data()};
}

// What codec::Encoder makes of pair.cur against pair.base: the frame a delta write should put
// on the wire, besides the message and tensor headers. 0 (with *error) when encoding fails.
size_t CodecBytes(const TensorPair& pair, std::string* error) {
  const codec::TensorBytes cur = Bytes(pair.dtype, pair.cur);
  const codec::TensorBytes base = Bytes(pair.dtype, pair.base);
  std::vector<uint8_t> frame(codec::EncodeBound(pair.dtype, cur.element_count));
  codec::Encoder encoder;
  Result<size_t> n = encoder.Encode(cur, &base, 1, 2, frame);
  if (!n.ok()) *error = n.status().ToString();
  return n.ok() ? *n : 0;
}

// A tensor of random bits: no codec shrinks it, so writing it sends it whole.
Tensor RandomTensor(DType dtype, size_t bytes, uint64_t seed) {
  Tensor t(dtype, {static_cast<int64_t>(bytes / DTypeSize(dtype))});
  std::mt19937_64 rng(seed);
  std::byte* p = t.mutable_data();
  for (size_t at = 0; at < t.nbytes(); at += 8) {
    const uint64_t word = rng();
    std::memcpy(p + at, &word, std::min<size_t>(8, t.nbytes() - at));
  }
  return t;
}

// ---- EasySync: A writes, B waits, reads and checks

struct TensorState : SyncedObject {
  Synced<Tensor> value{this, "value"};
  TensorState(Client& c, const std::string& object) : SyncedObject(c, object) {}
};

// What A and B share, mapped before fork.
struct Control {
  std::atomic<int> b_state{0};      // 1: B declared the attribute; -1: B failed
  std::atomic<int64_t> posted{0};   // the number of A's current write (1, 2, ...)
  std::atomic<uint64_t> hash{0};    // XXH3 of that write's tensor bytes
  std::atomic<int64_t> checked{0};  // the last write B read and verified; -1: a wrong value
  std::atomic<int64_t> held_ns{0};  // when B had read it (MonotonicNanos)
  std::atomic<bool> stop{false};    // A has made its last write
};

// B: reads every write and checks it until A stops; an exit code.
int ReceiveAll(TensorState& state, size_t bytes, Control* ctl) {
  for (int64_t n = 1;; ++n) {
    const auto deadline = Clock::now() + kValueTimeout;
    while (!state.value.wait_for_change(std::chrono::milliseconds(100))) {
      if (ctl->stop.load()) return 0;
      if (Clock::now() > deadline) {
        std::fprintf(stderr, "easysync-bench: net-tensor: B: write %lld did not arrive\n",
                     static_cast<long long>(n));
        return 1;
      }
    }
    const Tensor t = state.value.get();
    const int64_t held = MonotonicNanos();
    // A posts a write's hash before it writes, so this waits only for the store to show.
    while (ctl->posted.load(std::memory_order_acquire) < n) sched_yield();
    const bool ok = t.nbytes() == bytes &&
                    codec::HashBytes({reinterpret_cast<const uint8_t*>(t.data()), t.nbytes()}) ==
                        ctl->hash.load();
    ctl->held_ns.store(held);
    ctl->checked.store(ok ? n : -1, std::memory_order_release);
    if (!ok) {
      std::fprintf(stderr, "easysync-bench: net-tensor: B read other bytes than A wrote\n");
      return 1;
    }
  }
}

int Receive(const NetOptions& options, const std::string& object, size_t bytes, Control* ctl) {
  try {
    auto client = connect(options);
    TensorState state(*client, object);
    ctl->b_state.store(1);
    return ReceiveAll(state, bytes, ctl);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "easysync-bench: net-tensor: B: %s\n", e.what());
  }
  ctl->b_state.store(-1);  // A stops waiting
  ctl->checked.store(-1);
  return 1;
}

// A's tensor in GPU memory (--device cuda). Created after the forks: CUDA does not survive
// fork.
class DeviceCopy {
 public:
  DeviceCopy() = default;
  ~DeviceCopy() {
#if EASYSYNC_HAVE_CUDA
    if (p_ != nullptr) cudaFree(p_);
#endif
  }
  DeviceCopy(const DeviceCopy&) = delete;
  DeviceCopy& operator=(const DeviceCopy&) = delete;

  // Copies t to the device (waits until done); false (why on stderr) when it cannot.
  bool Upload(const Tensor& t) {
#if EASYSYNC_HAVE_CUDA
    cudaError_t err = cudaSuccess;
    if (p_ == nullptr || bytes_ != t.nbytes()) {
      if (p_ != nullptr) cudaFree(p_);
      p_ = nullptr;
      err = cudaMalloc(&p_, std::max<size_t>(t.nbytes(), 1));
      bytes_ = err == cudaSuccess ? t.nbytes() : 0;
    }
    if (err == cudaSuccess) err = cudaMemcpy(p_, t.data(), t.nbytes(), cudaMemcpyHostToDevice);
    if (err == cudaSuccess) return true;
    std::fprintf(stderr, "easysync-bench: net-tensor: A: CUDA: %s\n", cudaGetErrorString(err));
#else
    (void)t;
    std::fprintf(stderr, "easysync-bench: net-tensor: this build has no CUDA (--device cuda)\n");
#endif
    return false;
  }
  TensorView View(const Tensor& t) const {
    TensorView v = t.view();
    v.device = DeviceType::kCUDA;
    v.data = p_;
    return v;
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// A: one write at a time, each awaited until B holds it.
class Sender {
 public:
  Sender(Client& c, const std::string& object, Control* ctl, bool cuda)
      : client_(c), state_(c, object), ctl_(ctl), cuda_(cuda) {}

  AttrId attr() const { return state_.value.attr(); }

  bool WaitForB() {
    const auto deadline = Clock::now() + kValueTimeout;
    while (ctl_->b_state.load() == 0 && Clock::now() < deadline) poll(nullptr, 0, 1);
    return ctl_->b_state.load() == 1;
  }

  // Writes t; *seconds from the write until B had read it, *wire the bytes A's client sent.
  // A timed write starts kSettle after the write before it was read (see the top).
  bool Sync(const Tensor& t, double* seconds = nullptr, int64_t* wire = nullptr) {
    if (seconds != nullptr) poll(nullptr, 0, static_cast<int>(kSettle.count()));
    if (cuda_ && !device_.Upload(t)) return false;
    const int64_t n = ++writes_;
    ctl_->hash.store(codec::HashBytes({reinterpret_cast<const uint8_t*>(t.data()), t.nbytes()}));
    ctl_->posted.store(n, std::memory_order_release);
    const uint64_t sent = client_.stats().bytes_sent;
    const int64_t t0 = MonotonicNanos();
    if (cuda_) {
      const Result<uint64_t> v = client_.WriteTensor(state_.value.attr(), device_.View(t));
      if (!v.ok()) {
        std::fprintf(stderr, "easysync-bench: net-tensor: A: %s\n", v.status().ToString().c_str());
        return false;
      }
    } else {
      state_.value.set(t);
    }
    const uint64_t sent_after = client_.stats().bytes_sent;
    const auto deadline = Clock::now() + kValueTimeout;
    int64_t checked = 0;
    while ((checked = ctl_->checked.load(std::memory_order_acquire)) >= 0 && checked != n &&
           Clock::now() < deadline) {
      poll(nullptr, 0, 1);  // B's clock reading is the measurement, not this wake-up
    }
    if (checked != n) {
      std::fprintf(stderr, "easysync-bench: net-tensor: B did not confirm write %lld\n",
                   static_cast<long long>(n));
      return false;
    }
    if (seconds != nullptr) *seconds = static_cast<double>(ctl_->held_ns.load() - t0) / 1e9;
    if (wire != nullptr) *wire = static_cast<int64_t>(sent_after - sent);
    return true;
  }

 private:
  Client& client_;
  TensorState state_;
  Control* ctl_;
  bool cuda_;
  DeviceCopy device_;
  int64_t writes_ = 0;
};

// One link's figures (medians), written by the link's process into memory shared with the
// parent.
struct LinkResult {
  bool shaping_failed = false;
  double delta_s = NAN, full_s = NAN, gloo_s = NAN;
  int64_t wire_bytes = 0, full_wire_bytes = 0;
  // A's tensor on the device: a whole value (the encoder's base forgotten, as after another
  // writer) with NetOptions::device_direct on and off, and whether on meant in place.
  double whole_s = NAN, whole_staged_s = NAN;
  int64_t whole_wire_bytes = 0, whole_staged_wire_bytes = 0;
  bool whole_in_place = false;
};

// B in a child, A here; medians into *r. REQUIRES: no other threads (fork).
bool MeasureEasySync(const Flags& f, const NetOptions& options, const Placement& where,
                     StepSource& steps, LinkResult* r) {
  // Unique per run, so that a shared (--hub) hub's state from an earlier run does not matter.
  const std::string object = "bench_net_tensor_" + RandomToken().substr(0, 12);
  const DType dtype = steps.dtype();
  const size_t bytes = steps.bytes();
  SharedAnon mem(sizeof(Control));
  Control* ctl = new (mem.As<void>()) Control;
  const pid_t pid = ForkPinned([&] {
    PinToCpus(where.b_first, where.b_count);
    return Receive(options, object, bytes, ctl);
  });
  if (pid < 0) return false;
  PinToCpus(where.a_first, where.a_count);
  bool ok = false;
  try {
    auto client = connect(options);
    if (f.device == "host-twin") {
      // The device path on the host twins, in place as where UCX moves the device's memory.
      net::SetDevicePathForHostTensors(*client, true);
      net::SetInPlaceForHostTensors(*client, true);
    }
    Sender a(*client, object, ctl, f.device == "cuda");
    const std::vector<int64_t> shape = {static_cast<int64_t>(bytes / DTypeSize(dtype))};
    // Warm-up: the first value of this size through the connection, untimed.
    ok = a.WaitForB() && a.Sync(RandomTensor(dtype, bytes, 0));
    std::vector<double> delta, full, wire, full_wire, whole, whole_staged, whole_wire,
        whole_staged_wire;
    for (int k = 0; ok && k < f.reps; ++k) {
      std::string error;
      const TensorPair* pair = steps.Get(k, &error);
      if (pair == nullptr) {
        std::fprintf(stderr, "easysync-bench: net-tensor: %s\n", error.c_str());
        ok = false;
        break;
      }
      const Tensor base = Tensor::FromData(dtype, shape, pair->base.data());
      const Tensor cur = Tensor::FromData(dtype, shape, pair->cur.data());
      const Tensor random = RandomTensor(dtype, bytes, static_cast<uint64_t>(k) + 1);
      double d = 0, u = 0;
      int64_t dw = 0, uw = 0;
      ok = a.Sync(base) && a.Sync(cur, &d, &dw) && a.Sync(random, &u, &uw);
      delta.push_back(d);
      full.push_back(u);
      wire.push_back(static_cast<double>(dw));
      full_wire.push_back(static_cast<double>(uw));
      if (ok && f.device != "host") {
        // The step's weights as a whole value, from the device directly and staged.
        for (const bool direct : {true, false}) {
          net::SetDeviceDirect(*client, direct ? NetOptions::DeviceDirect::kAlways
                                               : NetOptions::DeviceDirect::kNever);
          net::ForgetDeviceBase(*client, a.attr());
          ok = ok && a.Sync(direct ? base : cur, &u, &uw);
          (direct ? whole : whole_staged).push_back(u);
          (direct ? whole_wire : whole_staged_wire).push_back(static_cast<double>(uw));
        }
        net::SetDeviceDirect(*client, options.device_direct);
      }
    }
    r->whole_in_place =
        f.device == "host-twin" || (f.device == "cuda" && net::UcxMovesCudaMemory(*client));
    if (ok && !whole.empty()) {
      r->whole_s = Median(whole);
      r->whole_staged_s = Median(whole_staged);
      r->whole_wire_bytes = static_cast<int64_t>(Median(whole_wire));
      r->whole_staged_wire_bytes = static_cast<int64_t>(Median(whole_staged_wire));
    }
    if (ok) {
      r->delta_s = Median(delta);
      r->full_s = Median(full);
      r->wire_bytes = static_cast<int64_t>(Median(wire));
      r->full_wire_bytes = static_cast<int64_t>(Median(full_wire));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "easysync-bench: net-tensor: A: %s\n", e.what());
    ok = false;
  }
  ctl->stop.store(true);
  return JoinChild(pid, !ok) && ok;
}

// ---- gloo: bench/workloads/gloo_broadcast.py

// The median seconds of the script's broadcasts of `bytes`, or NaN when it could not run
// (why on stderr: no such interpreter, no torch, a failed broadcast).
double GlooBroadcastSeconds(const Flags& f, size_t bytes) {
  const std::string script = WorkloadScript("EASYSYNC_GLOO_SCRIPT", "gloo_broadcast.py");
  int rc = 0;
  const std::string text = RunCapturingStdout(
      {f.python, script, "--bytes", std::to_string(bytes), "--reps", std::to_string(f.reps)},
      /*nth_cpu=*/-1, &rc);  // its stdout is ours to parse; its stderr passes through
  const std::vector<double> seconds = JsonNumberList(text, "seconds");
  if (rc == 0 && static_cast<int>(seconds.size()) == f.reps) return Median(seconds);
  std::string why = script + " failed with status " + std::to_string(rc);
  if (rc == 3) why = f.python + " cannot import torch with gloo (see above; --python PATH)";
  if (rc == 127) why = "cannot run " + f.python + " (--python PATH)";
  std::fprintf(stderr, "easysync-bench: net-tensor: gloo_broadcast_s is null: %s\n", why.c_str());
  return NAN;
}

// ---- links

// Runs a network tool (ip, tc) and waits; true when it exits 0. /usr/sbin and /sbin are tried
// too: they are not on every root's PATH.
bool RunTool(std::vector<std::string> args) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string name = args[0];
    for (const char* dir : {"", "/usr/sbin/", "/sbin/"}) {
      args[0] = dir + name;
      ExecArgs(args);
    }
    std::fprintf(stderr, "easysync-bench: net-tensor: cannot run %s\n", name.c_str());
    _exit(127);
  }
  int status = 0;
  return pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
         WEXITSTATUS(status) == 0;
}

// Moves the caller into a new network namespace whose loopback is up and shaped to `rate`
// (tc syntax, e.g. "1gbit"); the processes it starts afterwards inherit it. The bucket holds
// 256 KiB: more than one of loopback's 64 KiB segments, little next to a second's worth.
// False (why on stderr) when that cannot be done.
bool EnterShapedNamespace(const std::string& rate) {
  if (unshare(CLONE_NEWNET) != 0) {
    std::fprintf(stderr, "easysync-bench: net-tensor: unshare(CLONE_NEWNET): %s\n",
                 std::strerror(errno));
    return false;
  }
  return RunTool({"ip", "link", "set", "lo", "up"}) &&
         RunTool({"tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate, "burst", "256kb",
                  "latency", "50ms"});
}

// Everything of one link, in the process RunLinkProcess forked: the gloo pair, then the hub,
// B and A. An exit code.
int RunLink(const Flags& f, const std::string& link, const Placement& where, StepSource& steps,
            LinkResult* r) {
  if (Shaped(link) && !EnterShapedNamespace(link)) {
    r->shaping_failed = true;
    return 1;
  }
  const size_t bytes = steps.bytes();
  r->gloo_s = GlooBroadcastSeconds(f, bytes);

  NetOptions options;
  options.ucx_transports = f.transports;
  options.request_timeout = kValueTimeout;
  // A whole value plus its headers must fit a message, at the clients and at the hub.
  options.max_message_bytes = std::max<uint64_t>(options.max_message_bytes, bytes + (1 << 20));
  std::unique_ptr<HubProcess> hub;
  if (!UseHub(f.host, f.port, f.token, -1, [&] { PinToCpus(where.hub_first, 1); }, &options, &hub,
              {"--max-message-bytes", std::to_string(options.max_message_bytes)})) {
    std::fprintf(stderr, "easysync-bench: net-tensor: the hub did not start\n");
    return 1;
  }
  if (!MeasureEasySync(f, options, where, steps, r)) {
    std::fprintf(stderr, "easysync-bench: net-tensor: the EasySync sync failed on %s\n",
                 link.c_str());
    return 1;
  }
  if (hub && !hub->Stop()) std::fprintf(stderr, "easysync-bench: the hub did not exit cleanly\n");
  return 0;
}

// Runs RunLink in a forked process (so that a namespace and pinning stay there); false when
// it failed.
bool RunLinkProcess(const Flags& f, const std::string& link, const Placement& where,
                    StepSource& steps, LinkResult* out) {
  SharedAnon mem(sizeof(LinkResult));
  LinkResult* r = new (mem.As<void>()) LinkResult;
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int rc = 1;
    try {
      rc = RunLink(f, link, where, steps, r);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "easysync-bench: net-tensor: %s\n", e.what());
    }
    std::fflush(stderr);
    _exit(rc);
  }
  const bool ok = JoinChild(pid, false);
  *out = *r;
  return ok;
}

// ---- flags and output

int BadUsage(const std::string& why) {
  std::fprintf(
      stderr,
      "easysync-bench net-tensor: %s\n"
      "usage: easysync-bench net-tensor [--json] [--reps N] [--mib N]\n"
      "                                 [--steps DIR [--dtype NAME]] [--python PATH]\n"
      "                                 [--links loopback,10gbit,1gbit]\n"
      "                                 [--hub HOST:PORT --token T] "
      "[--ucx-transports LIST]\n"
      "                                 [--device host|cuda|host-twin] [--client-cpus N]\n",
      why.c_str());
  return 2;
}

// Parses argv[first..argc) into *f; an exit status for bad usage, or -1.
int ParseFlags(int argc, char** argv, int first, Flags* f) {
  for (int i = first; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--json") {
      f->json = true;
      continue;
    }
    if (i + 1 >= argc) return BadUsage(std::string(flag) + " needs a value");
    const std::string value = argv[++i];
    char* end = nullptr;
    const long long n = std::strtoll(value.c_str(), &end, 10);
    const bool integer = !value.empty() && *end == '\0';
    if (flag == "--reps") {
      if (!integer || n < 1 || n > 1000) return BadUsage("--reps needs 1..1000");
      f->reps = static_cast<int>(n);
    } else if (flag == "--mib") {
      if (!integer || n < 1 || n > 16384) return BadUsage("--mib needs 1..16384");
      f->mib = n;
    } else if (flag == "--steps") {
      f->steps_dir = value;
    } else if (flag == "--dtype") {
      const std::optional<DType> t = ParseDType(value);
      if (!t) return BadUsage("unknown dtype '" + value + "'");
      f->dtype = *t;
    } else if (flag == "--python") {
      f->python = value;
    } else if (flag == "--links") {
      f->links.clear();
      f->links_given = true;
      for (size_t at = 0; at <= value.size();) {
        const size_t comma = std::min(value.find(',', at), value.size());
        const std::string link = value.substr(at, comma - at);
        if (std::find(std::begin(kLinks), std::end(kLinks), link) == std::end(kLinks)) {
          return BadUsage("unknown link '" + link + "' (loopback, 10gbit, 1gbit)");
        }
        f->links.push_back(link);
        at = comma + 1;
      }
    } else if (flag == "--hub") {
      if (!ParseHubAddress(value, &f->host, &f->port)) return BadUsage("--hub needs HOST:PORT");
    } else if (flag == "--token") {
      f->token = value;
    } else if (flag == "--ucx-transports") {
      f->transports = value;
    } else if (flag == "--client-cpus") {
      if (!integer || n < 1 || n > 256) return BadUsage("--client-cpus needs 1..256");
      f->client_cpus = static_cast<int>(n);
    } else if (flag == "--device") {
      if (value != "host" && value != "cuda" && value != "host-twin") {
        return BadUsage("--device needs host, cuda or host-twin");
      }
      f->device = value;
    } else {
      return BadUsage("unknown flag '" + std::string(flag) + "'");
    }
  }
  if (!f->host.empty()) {
    if (f->token.empty() && std::getenv("EASYSYNC_TOKEN") == nullptr) {
      return BadUsage("--hub needs --token T (or EASYSYNC_TOKEN)");
    }
    if (f->links_given) return BadUsage("--links does not apply to --hub (no shaping)");
    f->links = {"external"};
  }
  return -1;
}

struct Row {
  std::string link;
  LinkResult r;
};

void PrintGoal(const std::string& link, const char* goal, double x, bool met) {
  std::printf("  %-8s  %-31s  %s\n", link.c_str(), goal,
              std::isnan(x) ? "unknown (no gloo figure)"
                            : ((met ? "met (" : "missed (") + Fixed(x, 3) + "x)").c_str());
}

// The goals. An external hub's link is not the gloo pair's: no speed goal there.
void PrintGoals(const std::vector<Row>& rows, int64_t codec_bytes) {
  std::printf("goals:\n");
  for (const Row& row : rows) {
    const double x = row.r.gloo_s / row.r.delta_s;  // NaN without a gloo figure
    if (row.link == "1gbit") PrintGoal(row.link, "delta >= 20x faster than gloo", x, x >= 20);
    if (row.link == "10gbit") PrintGoal(row.link, "delta >= 5x faster than gloo", x, x >= 5);
    if (row.link == "loopback") PrintGoal(row.link, "delta no slower than gloo", x, x >= 1);
  }
  for (const Row& row : rows) {
    const double x = static_cast<double>(row.r.wire_bytes) / static_cast<double>(codec_bytes);
    PrintGoal(row.link, "wire_bytes <= 1.1x codec_bytes", x, x <= 1.1);
  }
}

}  // namespace

int RunNetTensor(int argc, char** argv, int first) {
  Flags f;
  if (const int rc = ParseFlags(argc, argv, first, &f); rc >= 0) return rc;
  StartupCpus();  // before anything is pinned
  const bool any_shaped = std::any_of(f.links.begin(), f.links.end(), Shaped);
  if (any_shaped && geteuid() != 0) {
    std::fprintf(stderr,
                 "easysync-bench: net-tensor: not root, so no shaped links (they need a network "
                 "namespace and tc): loopback only\n");
    std::erase_if(f.links, Shaped);
  }
  if (f.links.empty()) return 1;

  StepSource steps;
  std::string error;
  if (!steps.Init(f, &error)) return BadUsage(error);
  // codec_bytes of the pair of every repetition, then their median like the other figures.
  std::vector<double> codec;
  for (size_t k = 0; k < static_cast<size_t>(f.reps); ++k) {
    if (k >= steps.count()) {
      codec.push_back(codec[k % steps.count()]);
      continue;
    }
    const TensorPair* pair = steps.Get(static_cast<int>(k), &error);
    const size_t n = pair == nullptr ? 0 : CodecBytes(*pair, &error);
    if (n == 0) {
      std::fprintf(stderr, "easysync-bench: net-tensor: cannot encode the step: %s\n",
                   error.c_str());
      return 1;
    }
    codec.push_back(static_cast<double>(n));
  }
  const int64_t codec_bytes = static_cast<int64_t>(Median(codec));
  const int64_t raw_bytes = static_cast<int64_t>(steps.bytes());
  const Placement where =
      f.host.empty() ? ChoosePlacement(false, f.client_cpus) : Placement{-1, 0, -1, 0, -1, "-"};
  const std::string hub = f.host.empty() ? "own" : f.host + ":" + std::to_string(f.port);

  std::vector<Row> rows;
  bool failed = false, shaping = true;
  for (const std::string& link : f.links) {
    if (Shaped(link) && !shaping) continue;
    if (!f.json) std::fprintf(stderr, "easysync-bench: net-tensor: measuring %s\n", link.c_str());
    Row row{link, {}};
    if (!RunLinkProcess(f, link, where, steps, &row.r)) {
      if (row.r.shaping_failed) {
        std::fprintf(stderr,
                     "easysync-bench: net-tensor: cannot shape a link here (see above): "
                     "loopback only\n");
        shaping = false;
      } else {
        failed = true;
      }
      continue;
    }
    const LinkResult& r = row.r;
    if (f.json) {
      JsonLine()
          .Add("suite", "net-tensor")
          .Add("link", link)
          .Add("step", steps.label())
          .Add("dtype", DTypeName(steps.dtype()))
          .Add("delta_s", r.delta_s)
          .Add("full_s", r.full_s)
          .Add("gloo_broadcast_s", r.gloo_s)
          .Add("delta_vs_gloo", r.gloo_s / r.delta_s)
          .Add("full_vs_gloo", r.gloo_s / r.full_s)
          .Add("wire_bytes", r.wire_bytes)
          .Add("full_wire_bytes", r.full_wire_bytes)
          .Add("codec_bytes", codec_bytes)
          .Add("raw_bytes", raw_bytes)
          .Add("wire_vs_codec",
               static_cast<double>(r.wire_bytes) / static_cast<double>(codec_bytes))
          .Add("whole_s", r.whole_s)
          .Add("whole_staged_s", r.whole_staged_s)
          .Add("whole_wire_bytes", r.whole_wire_bytes)
          .Add("whole_staged_wire_bytes", r.whole_staged_wire_bytes)
          .AddBool("whole_in_place", r.whole_in_place)
          .Add("gloo_link", link == "external" ? "loopback" : link)
          .Add("reps", static_cast<int64_t>(f.reps))
          .Add("transports", f.transports)
          .Add("device", f.device)
          .Add("hub", hub)
          .Add("placement", where.name)
          .Print();
    }
    rows.push_back(std::move(row));
  }
  if (f.json || rows.empty()) return failed || rows.empty() ? 1 : 0;

  std::printf(
      "net-tensor: %s step of a %lld MiB %s tensor (A's on %s), A -> hub (%s) -> B over UCX "
      "'%s', placement %s; medians of %d\n",
      steps.label().c_str(), static_cast<long long>(f.mib),
      std::string(DTypeName(steps.dtype())).c_str(), f.device.c_str(), hub.c_str(),
      f.transports.c_str(), where.name.c_str(), f.reps);
  Table table({"link", "delta_s", "full_s", "gloo_s", "delta_vs_gloo", "wire_bytes",
               "full_wire_bytes", "codec_bytes", "raw_bytes", "whole_s", "whole_staged_s"});
  auto fixed = [](double v, int decimals) {
    return std::isnan(v) ? std::string("-") : Fixed(v, decimals);
  };
  for (const Row& row : rows) {
    const LinkResult& r = row.r;
    table.Row({row.link, fixed(r.delta_s, 4), fixed(r.full_s, 4), fixed(r.gloo_s, 4),
               fixed(r.gloo_s / r.delta_s, 2), std::to_string(r.wire_bytes),
               std::to_string(r.full_wire_bytes), std::to_string(codec_bytes),
               std::to_string(raw_bytes), fixed(r.whole_s, 4), fixed(r.whole_staged_s, 4)});
  }
  table.Print();
  if (!f.host.empty()) std::printf("external hub: the gloo pair ran on this machine's loopback\n");
  PrintGoals(rows, codec_bytes);
  return failed ? 1 : 0;
}

}  // namespace easysync::bench
