// An easysync-hub process for the network suites: started on a free loopback port (the hub
// picks it with --port 0 and prints "easysync-hub: listening on ADDR:PORT"), stopped with
// SIGTERM.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "easysync/net.h"
#include "proc_util.h"

namespace easysync::bench {

// The directory of the running bench binary; empty when /proc does not say.
inline std::string BenchBinaryDir() {
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "";
  std::string dir(self, static_cast<size_t>(n));
  dir.resize(dir.rfind('/'));
  return dir;
}

// A script from bench/workloads/: the path in env_var if set, else the installed copy
// (<bench dir>/../share/easysync/), else the source tree's.
inline std::string WorkloadScript(const char* env_var, const std::string& file) {
  if (const char* env = std::getenv(env_var); env != nullptr && *env != '\0') return env;
  const std::string installed = BenchBinaryDir() + "/../share/easysync/" + file;
  if (access(installed.c_str(), R_OK) == 0) return installed;
  return std::string(EASYSYNC_BENCH_WORKLOADS_DIR) + "/" + file;
}

// EASYSYNC_HUB_BINARY if set, else easysync-hub next to the bench's build or install location:
// <bench dir>/../core/easysync-hub (build tree), then <bench dir>/easysync-hub (installed).
inline std::string FindHubBinary() {
  if (const char* env = std::getenv("EASYSYNC_HUB_BINARY"); env != nullptr && *env != '\0')
    return env;
  const std::string dir = BenchBinaryDir();
  if (dir.empty()) return "easysync-hub";
  for (const std::string& c : {dir + "/../core/easysync-hub", dir + "/easysync-hub"}) {
    if (access(c.c_str(), X_OK) == 0) return c;
  }
  return "easysync-hub";
}

// 32 random hex digits: a token only this run knows.
inline std::string RandomToken() {
  std::random_device rd;
  std::string t;
  for (int i = 0; i < 32; ++i) t += "0123456789abcdef"[rd() % 16];
  return t;
}

// Parses --hub's HOST:PORT; false when it is not that.
inline bool ParseHubAddress(const std::string& value, std::string* host, uint16_t* port) {
  const auto colon = value.rfind(':');
  const int p = colon == std::string::npos ? 0 : std::atoi(value.c_str() + colon + 1);
  if (colon == 0 || p <= 0 || p > 65535) return false;
  *host = value.substr(0, colon);
  *port = static_cast<uint16_t>(p);
  return true;
}

class HubProcess {
 public:
  // Starts `binary`, run by a child that first calls pin(); port() is 0 when it did not come
  // up within 30 s.
  template <class Pin>
  // spin_us >= 0 sets the hub's --spin-us; extra_args go last (e.g. --max-message-bytes N).
  HubProcess(const std::string& binary, const std::string& token, const std::string& transports,
             int64_t spin_us, Pin&& pin, const std::vector<std::string>& extra_args = {}) {
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return;
    std::vector<std::string> args = {binary, "--port", "0", "--token", token};
    if (!transports.empty()) args.insert(args.end(), {"--ucx-transports", transports});
    if (spin_us >= 0) args.insert(args.end(), {"--spin-us", std::to_string(spin_us)});
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::fflush(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      pin();
      dup2(out[1], STDOUT_FILENO);
      ExecArgs(args);
      std::fprintf(stderr, "easysync-bench: cannot run %s (set EASYSYNC_HUB_BINARY)\n",
                   binary.c_str());
      _exit(127);
    }
    close(out[1]);
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (pid_ > 0 && line.find('\n') == std::string::npos &&
           std::chrono::steady_clock::now() < deadline) {
      pollfd p{out[0], POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[256];
      const ssize_t got = read(out[0], buf, sizeof(buf));
      if (got <= 0) break;
      line.append(buf, static_cast<size_t>(got));
    }
    close(out[0]);
    const auto colon = line.rfind(':');
    if (line.find("listening on") != std::string::npos && colon != std::string::npos) {
      port_ = static_cast<uint16_t>(std::atoi(line.c_str() + colon + 1));
    }
  }
  ~HubProcess() { Stop(); }
  HubProcess(const HubProcess&) = delete;
  HubProcess& operator=(const HubProcess&) = delete;

  uint16_t port() const { return port_; }
  pid_t pid() const { return pid_; }

  // SIGTERM, then waits (SIGKILL after 10 s). True when the hub exited with status 0.
  bool Stop() {
    if (pid_ <= 0) return false;
    kill(pid_, SIGTERM);
    int status = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    pid_t r;
    while ((r = waitpid(pid_, &status, WNOHANG)) == 0 &&
           std::chrono::steady_clock::now() < deadline) {
      poll(nullptr, 0, 10);
    }
    if (r == 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
    }
    pid_ = -1;
    return r > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }

 private:
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

// Points options (ucx_transports already set) at the hub the clients use: the --hub given
// (host non-empty), or one started here with a fresh token (into *hub, as HubProcess does with
// the other arguments). False when that one did not start.
template <class Pin>
bool UseHub(const std::string& host, uint16_t port, const std::string& token, int64_t spin_us,
            Pin&& pin, NetOptions* options, std::unique_ptr<HubProcess>* hub,
            const std::vector<std::string>& extra_args = {}) {
  if (!host.empty()) {
    options->host = host;
    options->port = port;
    options->token = token;
    return true;
  }
  options->token = RandomToken();
  *hub = std::make_unique<HubProcess>(FindHubBinary(), options->token, options->ucx_transports,
                                      spin_us, std::forward<Pin>(pin), extra_args);
  options->port = (*hub)->port();
  return options->port != 0;
}

}  // namespace easysync::bench
