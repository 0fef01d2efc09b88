// Network mode: a client of an easysync-hub, over UCX.
//
//   auto client = easysync::connect({.host = "10.0.0.5", .port = 5000, .token = "secret"});
//   State state(*client);  // the same SyncedObject / Synced<T> as in shared-memory mode
//
// The client keeps a local replica of every attribute it declared: reads and LatestVersion
// never leave the process; a write goes to the hub, which orders it and relays it to every
// other client that declared the attribute. Tensors travel as verified deltas against the
// value the hub acknowledged. Protocol: docs/net_protocol.md.
//
// While the connection is down (the hub restarts, the link drops), reads keep returning the
// last values and writes are kept and return a provisional version; the client reconnects,
// resyncs, and then sends them (see NetOptions::reconnect).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "easysync/client.h"

namespace easysync {

struct NetOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 5000;
  // The hub's shared secret; empty: the EASYSYNC_TOKEN environment variable.
  std::string token;
  // UCX transport list in UCX_TLS syntax ("tcp", "shm,tcp", "rc,ud"); empty: UCX's choice.
  std::string ucx_transports;
  // How long the UCX progress thread and waiting callers keep polling after the last traffic
  // before they sleep; they yield the CPU between polls, so they give way to any thread with
  // work, and sleep at once when a thread computes on the same CPU. Negative: 50 us. Zero:
  // sleep at once (each message then pays a thread wake-up).
  std::chrono::nanoseconds spin{-1};
  std::chrono::milliseconds connect_timeout{10000};
  // How long Declare and Write wait for the hub's answer.
  std::chrono::milliseconds request_timeout{10000};
  // The largest message this client sends or accepts (the hub has its own limit, and the
  // smaller of the two applies to writes). Default: 1 GiB of value plus headers.
  uint64_t max_message_bytes = (1ull << 30) + (1ull << 20);
  // Keep-alive: a PING this often (its PONG also measures the round trip and keeps the clock
  // offset to the hub fresh); a hub silent for keepalive_timeout, with nothing arriving, is
  // taken for dead.
  std::chrono::milliseconds keepalive_interval{1000};
  std::chrono::milliseconds keepalive_timeout{10000};
  // After a lost connection: reconnect with exponential backoff between these bounds
  // (with jitter), authenticate again, re-declare every attribute and converge on the hub's
  // state. Writes made meanwhile are kept (the latest per attribute) and sent once the
  // connection is back. false: a lost connection fails every later call.
  bool reconnect = true;
  std::chrono::milliseconds reconnect_backoff_min{50};
  std::chrono::milliseconds reconnect_backoff_max{2000};
  // Threads that encode the segments of a large tensor write beside the writing thread (each
  // keeps ~2x a segment, 16 MiB, of buffers). Negative: one fewer than the CPUs the process
  // may use, at most 3. Zero: the writing thread encodes alone.
  int encode_threads = -1;
  // Threads that decode the segments of a large tensor update as they arrive (each keeps a
  // decoder's buffers). Negative: as many as the CPUs the process may use, at most 4 (none
  // with one CPU). Zero: the UCX progress thread decodes them.
  int decode_threads = -1;
  // Whole values of CUDA tensors in segments (a first write of a shape the hub holds, a write
  // after another writer's) may go from device memory straight to UCX: each segment hashed on
  // the GPU and sent raw, not staged through host memory. That needs a UCX that moves CUDA
  // memory (detected at run time; the log line says "CUDA memory yes"), and pays only where
  // the NIC reads GPU memory itself: over TCP, UCX stages device memory in small pieces, and
  // on an H100 a 256 MiB value took 1.5 s that way against 0.3 s staged and encoded here
  // (docs/decisions.md). kAuto: only when the connection to the hub has an RDMA lane (rc, dc);
  // kAlways: whenever UCX moves CUDA memory; kNever: staged always. Deltas are built on the
  // host either way.
  enum class DeviceDirect { kAuto, kAlways, kNever };
  DeviceDirect device_direct = DeviceDirect::kAuto;
};

// Connects and authenticates to the hub. PermissionDenied when the hub rejects the token,
// InvalidArgument on a protocol version mismatch, Unavailable/Timeout when it is not there.
Result<std::shared_ptr<Client>> TryConnect(const NetOptions& options);
// As TryConnect, throwing easysync::Error.
std::shared_ptr<Client> connect(const NetOptions& options);

}  // namespace easysync
