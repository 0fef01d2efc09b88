// Two-process plumbing for the bench suites: fork, pinning, anonymous shared memory.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "easysync/client.h"

namespace easysync::bench {

// The CPUs this process was allowed to use before the bench pinned anything: pinning the
// parent narrows what a later child inherits, so every pin starts from this set.
inline const cpu_set_t& StartupCpus() {
  static const cpu_set_t cpus = [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) CPU_ZERO(&set);
    return set;
  }();
  return cpus;
}

// Pins the calling process to the nth CPU of StartupCpus() (wrapping around).
// Best effort: failure (one CPU, a restricted cgroup) only costs measurement quality.
inline void PinToNthCpu(int nth) {
  const cpu_set_t& allowed = StartupCpus();
  const int count = CPU_COUNT(&allowed);
  if (count < 2) return;
  int want = nth % count;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    if (want-- == 0) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      (void)sched_setaffinity(0, sizeof(one), &one);
      return;
    }
  }
}

// Restricts the caller to CPUs [first, first + count) of StartupCpus(); first < 0: all of them.
inline void PinToCpus(int first, int count) {
  const cpu_set_t& allowed = StartupCpus();
  cpu_set_t set;
  CPU_ZERO(&set);
  int nth = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    if (first < 0 || (nth >= first && nth < first + count)) CPU_SET(cpu, &set);
    ++nth;
  }
  if (CPU_COUNT(&set) > 0) (void)sched_setaffinity(0, sizeof(set), &set);
}

// Where the network suites' three processes run (CPU indices into StartupCpus()). Each client
// has two busy threads (the caller and the UCX progress thread), so in the latency suites a
// client gets two CPUs when there are enough; in the throughput suite (net-tensor) it gets
// up to 6, for the threads that encode (writer) or decode (reader) a large tensor's
// segments; with one CPU nothing is pinned. With two CPUs the throughput suite
// (net-tensor) gives each client one, where it encodes or decodes while the hub floats over
// both; the latency suites (`latency`) give the hub one of its own and let the clients share
// the other: a ping-pong has work for one client at a time, while every message passes the
// hub (measured: 14.5-15.5 us one-way against 23.8-24.0 us with the clients apart and the hub
// floating).
struct Placement {
  int a_first, a_count, b_first, b_count, hub_first;
  std::string name;
};

// `client_cpus` > 0 asks for that many CPUs per client (the hub gets one after them); it is
// granted when there are that many, else the automatic choice stands.
inline Placement ChoosePlacement(bool latency = false, int client_cpus = 0) {
  const int n = CPU_COUNT(&StartupCpus());
  const auto apart = [](int c) {  // c CPUs per client, the hub on the next one
    const std::string k = std::to_string(c);
    return Placement{0, c, c, c, 2 * c, "A:" + k + "cpu,B:" + k + "cpu,hub:1cpu"};
  };
  if (client_cpus > 0 && 2 * client_cpus + 1 <= n) return apart(client_cpus);
  if (n >= 3) return apart(n < 5 ? 1 : latency ? 2 : std::min(6, (n - 1) / 2));
  if (n == 2 && latency) return {0, 1, 0, 1, 1, "A+B:1cpu,hub:1cpu"};
  if (n == 2) return {0, 1, 1, 1, -1, "A:1cpu,B:1cpu,hub:shared"};
  return {-1, 0, -1, 0, -1, "unpinned"};
}

// Runs fn() in a forked child pinned to the second allowed CPU, and pins the parent to the
// first. The child leaves with _exit(fn()) (1 on an exception), so it neither flushes the
// parent's stdio buffers a second time nor runs its atexit handlers. Returns the child's pid,
// or -1 when fork failed.
// REQUIRES: the caller has no other threads (fork copies only the calling one).
template <class Fn>
pid_t ForkPinned(Fn&& fn) {
  StartupCpus();  // captured before the first pin
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid == 0) {
    int rc = 1;
    try {
      PinToNthCpu(1);
      rc = fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "easysync-bench: child: %s\n", e.what());
    }
    std::fflush(stderr);
    _exit(rc);
  }
  if (pid > 0) PinToNthCpu(0);
  return pid;
}

// Waits for the child; when `kill_first` (the parent gave up on it), kills it first.
// True when it exited with status 0.
inline bool JoinChild(pid_t pid, bool kill_first) {
  if (pid <= 0) return false;
  if (kill_first) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return false;
  }
  return !kill_first && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// execvp(args[0], args); returns only when that failed.
inline void ExecArgs(std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
}

// Starts args in a child that dies with this process, pinned to the nth_cpu-th startup CPU
// when nth_cpu >= 0. Its stdout goes to a pipe whose read end lands in *out_fd when out_fd
// is given; its stderr passes through. -1 when it could not start; exit code 127 when
// args[0] could not be run.
inline pid_t SpawnArgs(std::vector<std::string> args, int nth_cpu, int* out_fd) {
  StartupCpus();  // captured before the first pin
  int out[2] = {-1, -1};
  if (out_fd != nullptr && pipe2(out, O_CLOEXEC) != 0) return -1;
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (nth_cpu >= 0) PinToNthCpu(nth_cpu);
    if (out_fd != nullptr) dup2(out[1], STDOUT_FILENO);
    ExecArgs(args);
    std::fprintf(stderr, "easysync-bench: cannot run %s: %s\n", args[0].c_str(),
                 std::strerror(errno));
    _exit(127);
  }
  if (out_fd != nullptr) {
    close(out[1]);
    if (pid < 0) {
      close(out[0]);
    } else {
      *out_fd = out[0];
    }
  }
  return pid;
}

// A child's exit code (128 + signal when a signal ended it), -1 when it cannot be waited for.
inline int WaitExitCode(pid_t pid) {
  int status = 0;
  if (pid <= 0) return -1;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Runs args (as SpawnArgs) to its end; returns what it wrote to stdout, its exit code in *rc.
inline std::string RunCapturingStdout(std::vector<std::string> args, int nth_cpu, int* rc) {
  int out = -1;
  const pid_t pid = SpawnArgs(std::move(args), nth_cpu, &out);
  std::string text;
  char buf[65536];
  ssize_t got;
  while (pid > 0 && (got = read(out, buf, sizeof(buf))) != 0) {
    if (got > 0) text.append(buf, static_cast<size_t>(got));
    if (got < 0 && errno != EINTR) break;
  }
  if (out >= 0) close(out);
  *rc = WaitExitCode(pid);
  return text;
}

// An anonymous MAP_SHARED mapping made before fork: both processes see the same bytes.
// Zero-filled, page-aligned. Unmaps in its destructor.
class SharedAnon {
 public:
  explicit SharedAnon(size_t bytes) : bytes_(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    base_ = p;
  }
  ~SharedAnon() { munmap(base_, bytes_); }
  SharedAnon(const SharedAnon&) = delete;
  SharedAnon& operator=(const SharedAnon&) = delete;
  template <class T>
  T* As() const {
    return static_cast<T*>(base_);
  }

 private:
  void* base_ = nullptr;
  size_t bytes_ = 0;
};

inline double NanosSince(Clock::time_point t0, Clock::time_point t1) {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
}

}  // namespace easysync::bench
