// A real easysync-hub process for network tests: started on a free loopback port (the hub
// picks it with --port 0 and prints it), stopped with SIGTERM, its exit code checked.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

#include "easysync/tensor.h"
#include "easysync/value_traits.h"
#include "process_util.h"

namespace easysync::testing {

inline constexpr char kTestToken[] = "test-token-0123456789";

class HubProcess {
 public:
  // Starts the hub; extra flags are appended. port() is 0 if it did not come up. With a
  // stderr_path, the hub's log (its stderr) goes to that file instead of the test's stderr.
  explicit HubProcess(std::vector<std::string> extra = {}, const std::string& stderr_path = "") {
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return;
    std::vector<std::string> args = {EASYSYNC_HUB_PATH, "--port", "0", "--token", kTestToken};
    args.insert(args.end(), extra.begin(), extra.end());
    std::fflush(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(out[1], STDOUT_FILENO);
      if (!stderr_path.empty()) {
        const int log = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (log >= 0) dup2(log, STDERR_FILENO);
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    // "easysync-hub: listening on 127.0.0.1:PORT"
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{out[0], POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[256];
      const ssize_t n = read(out[0], buf, sizeof(buf));
      if (n <= 0) break;
      line.append(buf, static_cast<size_t>(n));
    }
    close(out[0]);
    const auto colon = line.rfind(':');
    if (line.find("listening on") != std::string::npos && colon != std::string::npos) {
      port_ = static_cast<uint16_t>(std::stoi(line.substr(colon + 1)));
    }
  }
  ~HubProcess() {
    if (pid_ > 0) Stop();
  }
  uint16_t port() const { return port_; }
  pid_t pid() const { return pid_; }
  bool Running() const {
    int status = 0;
    return pid_ > 0 && waitpid(pid_, &status, WNOHANG) == 0;
  }
  // SIGTERM, then the hub's exit code (see WaitChild).
  int Stop() {
    if (pid_ <= 0) return -3;
    kill(pid_, SIGTERM);
    const int rc = WaitChild(pid_, std::chrono::seconds(20));
    pid_ = -1;
    return rc;
  }

 private:
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

// A pipe one process waits on (with a deadline) until another says go.
class Gate {
 public:
  Gate() { (void)!pipe(fds_); }
  ~Gate() {
    close(fds_[0]);
    close(fds_[1]);
  }
  void Open() { (void)!write(fds_[1], "g", 1); }
  bool Wait(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    pollfd p{fds_[0], POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
    char c;
    return read(fds_[0], &c, 1) == 1;
  }

 private:
  int fds_[2] = {-1, -1};
};

// The raw attribute value (header + data) of a float32 tensor of n elements, element i = i * k.
inline std::vector<std::byte> RawFloatTensor(size_t n, float k) {
  Tensor t(DType::kFloat32, {static_cast<int64_t>(n)});
  auto* f = reinterpret_cast<float*>(t.mutable_data());
  for (size_t i = 0; i < n; ++i) f[i] = static_cast<float>(i) * k;
  return ValueTraits<Tensor>::WithEncoding(t, [](size_t size, auto&& encode) {
    std::vector<std::byte> out(size);
    encode(out.data());
    return out;
  });
}

}  // namespace easysync::testing
