// What the tests that run processes in network namespaces of their own share: finding a
// tool (nft, ip), running it without a shell, and bringing a new namespace's loopback up.
#pragma once

#include <fcntl.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "process_util.h"

namespace easysync::testing {

// The tool's path: PATH first, then the sbin directories, which a root shell has on PATH but
// a CI runner's environment may not.
inline std::string FindTool(const std::string& name) {
  std::string dirs = std::getenv("PATH") != nullptr ? std::getenv("PATH") : "";
  dirs += ":/usr/sbin:/sbin";
  size_t start = 0;
  while (start <= dirs.size()) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string dir = dirs.substr(start, end - start);
    const std::string path = (dir.empty() ? "." : dir) + "/" + name;
    if (access(path.c_str(), X_OK) == 0) return path;
    start = end + 1;
  }
  return "";
}

// Runs argv without a shell and returns its exit code (-1 if it could not run); its stdout
// goes to *out when given. The caller may have threads (clients), so the child only dup2s
// and execs: argv is built before the fork.
inline int Run(const std::vector<std::string>& args, std::string* out = nullptr) {
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  int pipefd[2] = {-1, -1};
  if (out != nullptr && pipe2(pipefd, O_CLOEXEC) != 0) return -1;
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    if (out != nullptr) dup2(pipefd[1], STDOUT_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  if (out != nullptr) {
    close(pipefd[1]);
    char buf[4096];
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) out->append(buf, static_cast<size_t>(n));
    close(pipefd[0]);
  }
  return WaitChild(pid, std::chrono::seconds(20));
}

// The same as `ip link set lo up`, without needing iproute2: a new namespace's loopback is
// down, and the hub listens on 127.0.0.1.
inline bool LoopbackUp() {
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  bool ok = ioctl(fd, SIOCGIFFLAGS, &ifr) == 0;
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
  ok = ok && ioctl(fd, SIOCSIFFLAGS, &ifr) == 0;
  close(fd);
  return ok;
}

// Whether interface `dev` is running (up, with its carrier: a veth end whose peer is up too).
inline bool InterfaceRunning(const std::string& dev) {
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, dev.c_str(), IFNAMSIZ - 1);
  const bool running = ioctl(fd, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_RUNNING) != 0;
  close(fd);
  return running;
}

}  // namespace easysync::testing
