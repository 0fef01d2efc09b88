// The suites of easysync-bench and the command-line knobs they share.
#pragma once

#include <cstdint>

namespace easysync::bench {

// Parsed flags; a negative number means "not given: use the suite's default".
struct Args {
  bool json = false;
  int64_t iters = -1;   // measured samples per configuration (after warm-up)
  double seconds = -1;  // cap on the measuring time of one configuration
  int64_t mib = -1;     // shm-throughput: value size
};

// Each returns the process exit status: 0 on success, 1 when a measurement failed.
int RunShmLatency(const Args& args);
int RunShmThroughput(const Args& args);

// net-latency parses its own flags, argv[first..argc) (net_latency.cc); 2 for bad usage.
int RunNetLatency(int argc, char** argv, int first);

// udp-latency likewise (udp_latency.cc).
int RunUdpLatency(int argc, char** argv, int first);

// net-tensor likewise (net_tensor.cc).
int RunNetTensor(int argc, char** argv, int first);
// py-overhead: the Python package's ping-pong against C++'s, in one run.
int RunPyOverhead(int argc, char** argv, int first);

// The codec suite parses its own flags, argv[first..argc) (codec_bench.cc); it also returns 2 for
// bad usage and 3 for --device cuda without a device.
int RunCodec(int argc, char** argv, int first);

}  // namespace easysync::bench
