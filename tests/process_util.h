// Real processes for multi-process tests: fork a child that runs a function and exits with
// its return value; wait for it with a deadline (a hung child is a failure, never a hang).
#pragma once

#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "easysync/status.h"

namespace easysync::testing {

// Runs fn in a child process; the child exits with fn's result (or 99 on an exception).
inline pid_t Spawn(const std::function<int()>& fn) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // a crashed test leaves no orphans behind
    int rc = 99;
    try {
      rc = fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %d: %s\n", getpid(), e.what());
    }
    std::fflush(nullptr);
    _exit(rc);
  }
  return pid;
}

// The child's exit code, 128+signal if killed, or -1 (after killing it) on timeout.
inline int WaitChild(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -2;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// A cluster name unique to this test process and purpose.
inline std::string UniqueCluster(const std::string& purpose) {
  return "t" + std::to_string(getpid()) + "_" + purpose;
}

// Polls pred (every `every`) until it holds or the deadline passes.
template <class Pred>
bool WaitFor(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(20),
             std::chrono::microseconds every = std::chrono::microseconds(100)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(every);
  }
  return true;
}

// The state letter of a process (R, S, T for stopped, ...), from /proc; '?' if unknown.
inline char ProcessState(pid_t pid) {
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
  if (f == nullptr) return '?';
  char buf[512] = {};
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  const std::string stat(buf, n);
  const size_t paren = stat.rfind(')');  // the command name may contain spaces
  return paren != std::string::npos && paren + 2 < stat.size() ? stat[paren + 2] : '?';
}

// Names under /dev/shm that belong to a cluster (the segment and its extents).
inline std::vector<std::string> ClusterFiles(const std::string& cluster) {
  std::vector<std::string> out;
  const std::string exact = "easysync." + cluster;
  if (DIR* dir = opendir("/dev/shm")) {
    while (dirent* e = readdir(dir)) {
      const std::string n = e->d_name;
      if (n == exact || n.rfind(exact + ".", 0) == 0) out.push_back(n);
    }
    closedir(dir);
  }
  return out;
}

}  // namespace easysync::testing
