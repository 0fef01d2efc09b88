// Client telemetry. Counters are relaxed atomics kept per client: counting costs a few
// nanoseconds on the write and apply paths and never takes a lock.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace easysync {

struct Stats {
  // Write-to-apply latency of updates this client applied: each update carries the writer's
  // CLOCK_MONOTONIC timestamp. latency_ms is a moving average (weight 1/16 per sample).
  double latency_ms = 0;
  double latency_last_ms = 0;
  double latency_max_ms = 0;
  uint64_t latency_samples = 0;
  // What crossed the bus: value bytes written / read, and one packet per update.
  uint64_t bytes_sent = 0;
  uint64_t bytes_recv = 0;
  uint64_t packets_sent = 0;
  uint64_t packets_recv = 0;
  uint64_t updates_sent = 0;            // writes published by this client
  uint64_t updates_applied = 0;         // new versions this client read into its proxies
  uint64_t torn_read_retries = 0;       // reads retried because a writer overwrote the buffer
  uint64_t dead_writer_recoveries = 0;  // slot locks taken over from a killed writer

  // Every field by name (for Python's dict and for printing).
  std::map<std::string, double> AsMap() const;
  std::string ToString() const;
};

}  // namespace easysync
