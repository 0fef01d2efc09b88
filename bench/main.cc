// easysync-bench: dispatches to one suite. See usage() for the flags.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "bench.h"

namespace {

void Usage(std::FILE* out) {
  std::fputs(
      "usage: easysync-bench <suite> [flags]\n"
      "suites:\n"
      "  shm-latency     one-way latency of a Synced<int64_t> update between two processes,\n"
      "                  poll and futex wait modes, each against its raw floor\n"
      "  shm-throughput  publish/read of a float32 Synced<Tensor> against memcpy\n"
      "  codec           the tensor delta codec against memcpy and zstd baselines, on files,\n"
      "                  a directory of steps or a synthetic update (own flags: see\n"
      "                  easysync-bench codec --help)\n"
      "  net-latency     one-way latency of an int64 update client -> hub -> client over UCX\n"
      "                  against a raw UCX active-message ping-pong; own flags: [--json]\n"
      "                  [--iters N] [--hub HOST:PORT --token T] [--ucx-transports LIST]\n"
      "                  [--spin-us N] (default: its own hub on loopback, transports tcp;\n"
      "                  --spin-us sets the spin of the clients and of its own hub)\n"
      "  udp-latency     one-way latency of a double update client -> hub -> client over the\n"
      "                  UDP path (Transport::kUdp) against the same over reliable UCX, in\n"
      "                  the same run; own flags as net-latency (default: its own hub on\n"
      "                  loopback, transports tcp, default spin)\n"
      "  net-tensor      one training step's update of a 256 MiB bfloat16 tensor synced\n"
      "                  A -> hub -> B (delta_s), the whole tensor synced (full_s) and a\n"
      "                  torch.distributed gloo broadcast of it (gloo_broadcast_s), on\n"
      "                  loopback and on loopback shaped to 10 and 1 Gbit/s (tc in a network\n"
      "                  namespace: root only); own flags: [--json] [--reps N (3)]\n"
      "                  [--mib N (256)] [--steps DIR [--dtype NAME (bf16)]]\n"
      "                  [--python PATH (python3)] [--links loopback,10gbit,1gbit]\n"
      "                  [--hub HOST:PORT --token T] [--ucx-transports LIST (tcp)]\n"
      "                  [--device host|cuda|host-twin] [--client-cpus N (automatic)]\n"
      "                  (default step: synthetic rl-bf16, 1.5% of elements move by 1 ULP;\n"
      "                  --steps: snapshot pairs as in codec, tiled to the size)\n"
      "  py-overhead     one-way latency of a Python attribute update between two Python\n"
      "                  processes against the same from C++, shared memory, poll mode; own\n"
      "                  flags: [--json] [--iters N] [--seconds S] [--python PATH]\n"
      "flags (shm-*):\n"
      "  --json          one JSON object per line per configuration, nothing else on stdout\n"
      "  --iters N       measured samples per configuration (after warm-up)\n"
      "  --seconds S     stop measuring a configuration after S seconds\n"
      "  --mib M         shm-throughput only: tensor size in MiB (default 64)\n",
      out);
}

int BadUsage(const std::string& why) {
  std::fprintf(stderr, "easysync-bench: %s\n", why.c_str());
  Usage(stderr);
  return 2;
}

// A positive number in full, or nothing.
bool ParsePositive(const char* s, double* out) {
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (end == s || *end != '\0' || !(v > 0) || v > 1e12) return false;
  *out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return BadUsage("no suite given");
  const std::string_view suite = argv[1];
  if (suite == "-h" || suite == "--help" || suite == "help") {
    Usage(stdout);
    return 0;
  }
  if (suite == "codec") return easysync::bench::RunCodec(argc, argv, 2);
  if (suite == "net-latency") return easysync::bench::RunNetLatency(argc, argv, 2);
  if (suite == "udp-latency") return easysync::bench::RunUdpLatency(argc, argv, 2);
  if (suite == "net-tensor") return easysync::bench::RunNetTensor(argc, argv, 2);
  if (suite == "py-overhead") return easysync::bench::RunPyOverhead(argc, argv, 2);
  const bool latency = suite == "shm-latency";
  const bool throughput = suite == "shm-throughput";
  if (!latency && !throughput) return BadUsage("unknown suite '" + std::string(suite) + "'");

  easysync::bench::Args args;
  for (int i = 2; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--json") {
      args.json = true;
      continue;
    }
    const bool integral = flag == "--iters" || flag == "--mib";
    if (flag != "--iters" && flag != "--seconds" && !(throughput && flag == "--mib")) {
      return BadUsage("unknown flag '" + std::string(flag) + "' for " + std::string(suite));
    }
    double v = 0;
    if (i + 1 >= argc || !ParsePositive(argv[i + 1], &v) ||
        (integral && v != static_cast<double>(static_cast<int64_t>(v)))) {
      return BadUsage(std::string(flag) + " needs a positive " + (integral ? "integer" : "number"));
    }
    ++i;
    if (flag == "--iters") args.iters = static_cast<int64_t>(v);
    if (flag == "--seconds") args.seconds = v;
    if (flag == "--mib") args.mib = static_cast<int64_t>(v);
  }
  if (args.mib > 65536) return BadUsage("--mib is at most 65536");
  return latency ? easysync::bench::RunShmLatency(args) : easysync::bench::RunShmThroughput(args);
}
