// Client telemetry. Counters are relaxed atomics kept per client: counting costs a few
// nanoseconds on the write and apply paths and never takes a lock.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace easysync {

struct Stats {
  // Write-to-apply latency of updates this client applied: each update carries the writer's
  // CLOCK_MONOTONIC timestamp (network mode: translated through clock offsets that PING/PONG
  // round trips keep measuring). latency_ms is a moving average (weight 1/16 per sample).
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
  // Network mode: tensor values travel as codec frames, deltas against what the receiver has.
  uint64_t deltas_sent = 0;       // tensor writes sent as a delta
  uint64_t full_sent = 0;         // tensor writes sent whole (no base the hub holds, or smaller)
  uint64_t deltas_recv = 0;       // deltas applied to this client's replicas
  uint64_t full_recv = 0;         // whole tensor values received as codec frames
  uint64_t codec_raw_bytes = 0;   // tensor bytes written, before encoding
  uint64_t codec_wire_bytes = 0;  // what they became on the wire
  double compression_ratio = 1;   // codec_raw_bytes / codec_wire_bytes (1 before any)
  uint64_t resyncs = 0;     // whole values resent or requested because a delta's base was gone
  uint64_t reconnects = 0;  // connections to the hub re-established after a failure
  double rtt_ms = 0;        // round trip to the hub (network mode), moving average
  // The UDP path (attributes with Transport::kUdp): datagrams dropped as older than what is
  // held (or repeated), dropped as not authentic (bad MAC, replayed, malformed), and values
  // whose fragments never all arrived (superseded or evicted).
  uint64_t datagrams_dropped_stale = 0;
  uint64_t datagrams_dropped_bad = 0;
  uint64_t fragments_incomplete = 0;

  // Every field by name (for Python's dict and for printing).
  std::map<std::string, double> AsMap() const;
  std::string ToString() const;
};

}  // namespace easysync
