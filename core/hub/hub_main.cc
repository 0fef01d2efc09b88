// easysync-hub: the server of network mode. See `easysync-hub --help`.
#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "hub/hub.h"

namespace {

constexpr char kUsage[] =
    "usage: easysync-hub [--port P] [--bind ADDR] [--token SECRET] [--max-message-bytes N]\n"
    "                    [--ucx-transports LIST] [--max-total-value-bytes N]\n"
    "                    [--max-attributes N] [--apply-thread on|off]\n"
    "                    [--admission on|strict|off]\n"
    "  --port P               port to listen on: UCX (TCP), and UDP for best-effort\n"
    "                         attributes (default 5000; 0: any free port)\n"
    "  --bind ADDR            address to listen on (default 127.0.0.1; 0.0.0.0 for all)\n"
    "  --token SECRET         shared secret clients must prove they know (or EASYSYNC_TOKEN)\n"
    "  --max-message-bytes N  largest message accepted (default 1074790400: 1 GiB + 1 MiB)\n"
    "  --ucx-transports LIST  UCX transport list, UCX_TLS syntax (e.g. tcp, shm,tcp, rc,ud)\n"
    "  --handshake-timeout-ms N  drop peers that have not authenticated by then (10000)\n"
    "  --max-total-value-bytes N  bound on the latest values the hub keeps, all together\n"
    "                         (default 17179869184); writes past it are refused. Tensors\n"
    "                         with UDP subscribers also keep their previous value (the\n"
    "                         base of those subscribers' deltas): up to twice this\n"
    "  --max-attributes N     bound on the attributes the hub keeps (default 1048576)\n"
    "  --spin-us N            keep polling this long after a message before sleeping,\n"
    "                         yielding the CPU between polls (default: 50)\n"
    "  --apply-thread on|off  apply large (segmented) writes to the hub's copy on a thread\n"
    "                         of its own, at low priority (default on; or\n"
    "                         EASYSYNC_HUB_APPLY_THREAD); off: on the thread that relays\n"
    "  --admission on|strict|off  who may open a TCP connection: on (default), addresses\n"
    "                         that proved the token over UDP first (clients do) and\n"
    "                         127.0.0.1, ::1; strict: only the former; off: any address\n";

bool ParseU64(const char* s, uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || s[0] == '-') return false;
  *out = v;
  return true;
}

// "on" or "off"; false for anything else.
bool ParseOnOff(const char* s, bool* out) {
  if (std::strcmp(s, "on") != 0 && std::strcmp(s, "off") != 0) return false;
  *out = std::strcmp(s, "on") == 0;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  easysync::hub::HubOptions options;
  if (const char* env = std::getenv("EASYSYNC_TOKEN")) options.token = env;
  if (const char* env = std::getenv("EASYSYNC_HUB_APPLY_THREAD");
      env != nullptr && !ParseOnOff(env, &options.apply_thread)) {
    std::fprintf(stderr, "easysync-hub: EASYSYNC_HUB_APPLY_THREAD must be on or off\n");
    return 2;
  }
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "easysync-hub: %s needs a value\n%s", flag.c_str(), kUsage);
      return 2;
    }
    const char* value = argv[++i];
    uint64_t n = 0;
    if (flag == "--port" && ParseU64(value, &n) && n <= 65535) {
      options.port = static_cast<uint16_t>(n);
    } else if (flag == "--bind") {
      options.bind = value;
    } else if (flag == "--token") {
      options.token = value;
    } else if (flag == "--max-message-bytes" && ParseU64(value, &n) && n >= 1024) {
      options.max_message_bytes = n;
    } else if (flag == "--handshake-timeout-ms" && ParseU64(value, &n) && n >= 1 &&
               n <= 3'600'000) {
      options.handshake_timeout = std::chrono::milliseconds(n);
    } else if (flag == "--spin-us" && ParseU64(value, &n) && n <= 1'000'000) {
      options.spin = std::chrono::microseconds(n);
    } else if (flag == "--max-total-value-bytes" && ParseU64(value, &n) && n >= 1024) {
      options.max_total_value_bytes = n;
    } else if (flag == "--max-attributes" && ParseU64(value, &n) && n >= 1 && n <= (1u << 31)) {
      options.max_attributes = static_cast<uint32_t>(n);
    } else if (flag == "--apply-thread" && ParseOnOff(value, &options.apply_thread)) {
    } else if (flag == "--admission" && std::strcmp(value, "on") == 0) {
      options.admission = easysync::hub::HubOptions::Admission::kOn;
    } else if (flag == "--admission" && std::strcmp(value, "strict") == 0) {
      options.admission = easysync::hub::HubOptions::Admission::kStrict;
    } else if (flag == "--admission" && std::strcmp(value, "off") == 0) {
      options.admission = easysync::hub::HubOptions::Admission::kOff;
    } else if (flag == "--ucx-transports") {
      options.ucx_transports = value;
    } else {
      std::fprintf(stderr, "easysync-hub: bad flag or value: %s %s\n%s", flag.c_str(), value,
                   kUsage);
      return 2;
    }
  }
  if (options.token.empty()) {
    std::fprintf(stderr,
                 "easysync-hub: no token: pass --token SECRET or set EASYSYNC_TOKEN (clients "
                 "must prove they know it)\n");
    return 2;
  }
  // A restarted hub takes its port back at once, even while connections of the previous one
  // linger in TIME_WAIT (SO_REUSEADDR on the listener; UCX reads this before it starts).
  setenv("UCX_TCP_CM_REUSEADDR", "y", /*overwrite=*/0);
  // Every thread the hub starts inherits this mask: only sigwait below sees the signals.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto hub = easysync::hub::Hub::Start(options);
  if (!hub.ok()) {
    std::fprintf(stderr, "easysync-hub: %s\n", hub.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "easysync-hub: %s\n", (*hub)->ucx_description().c_str());
  std::printf("easysync-hub: listening on %s:%u\n", options.bind.c_str(), (*hub)->port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "easysync-hub: %s, shutting down\n", strsignal(sig));
  hub->reset();
  return 0;
}
