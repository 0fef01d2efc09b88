// The host side of the codec suite: codec::Encoder / codec::Decoder on one core, against memcpy
// of the same size and three zstd baselines, all measured in the same run.
//
// The timed encode and decode pass the base hash they would know in a stream of updates (the
// sender and the receiver both keep the result_hash of the last frame, see
// docs/wire_format.md), so neither hashes the base; the *_nohint_gbps figures are the same
// calls without that hint, for a sender or receiver that has to hash its base first.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>
#include <span>
#include <string>
#include <vector>

#include "codec_baselines.h"
#include "codec_bench.h"
#include "easysync/codec.h"
#include "stats_util.h"

namespace easysync::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;

// Median nanoseconds of fn() over reps; false as soon as fn() does.
template <class Fn>
bool TimeMedianNs(const Reps& reps, Fn&& fn, double* median_ns) {
  std::vector<double> ns;
  for (int i = 0; i < reps.warmup + reps.timed; ++i) {
    const auto t0 = SteadyClock::now();
    if (!fn()) return false;
    const auto t1 = SteadyClock::now();
    if (i >= reps.warmup) {
      ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
    }
  }
  *median_ns = Median(std::move(ns));
  return true;
}

double Ratio(size_t raw, size_t encoded) {
  return encoded == 0 ? 0 : static_cast<double>(raw) / static_cast<double>(encoded);
}

}  // namespace

bool MeasureHostPair(const TensorPair& pair, const Reps& reps, Record* out, std::string* error) {
  const size_t esize = DTypeSize(pair.dtype);
  const size_t n = pair.cur.size();
  const codec::TensorBytes cur{pair.dtype, n / esize, pair.cur.data()};
  const codec::TensorBytes base{pair.dtype, n / esize, pair.base.data()};
  const uint64_t base_hash = codec::HashBytes(pair.base);

  // Encode: the frame of the last repetition is the one decoded below.
  codec::Encoder encoder;
  std::vector<uint8_t> frame(codec::EncodeBound(pair.dtype, cur.element_count));
  codec::EncodeHints hints;
  hints.known_base_hash = base_hash;
  size_t frame_size = 0;
  Status status;
  auto encode = [&](const codec::EncodeHints& h) {
    Result<size_t> r = encoder.Encode(cur, &base, 1, 2, frame, h);
    if (!r.ok()) {
      status = r.status();
      return false;
    }
    frame_size = *r;
    return true;
  };
  double encode_ns = 0;
  double encode_nohint_ns = 0;
  if (!TimeMedianNs(
          reps, [&] { return encode({}); }, &encode_nohint_ns) ||
      !TimeMedianNs(
          reps, [&] { return encode(hints); }, &encode_ns)) {
    *error = "encode failed: " + status.ToString();
    return false;
  }
  // The whole value, no base (what a first sync or a RESYNC sends): its own frame buffer.
  std::vector<uint8_t> whole(frame.size());
  size_t whole_size = 0;
  double whole_ns = 0;
  if (!TimeMedianNs(
          reps,
          [&] {
            Result<size_t> r = encoder.Encode(cur, nullptr, 0, 1, whole);
            if (!r.ok()) status = r.status();
            whole_size = r.ok() ? *r : 0;
            return r.ok();
          },
          &whole_ns)) {
    *error = "whole-value encode failed: " + status.ToString();
    return false;
  }
  const std::span<const uint8_t> frame_bytes(frame.data(), frame_size);
  Result<codec::FrameInfo> info = codec::PeekFrame(frame_bytes);
  if (!info.ok()) {
    *error = "the encoded frame does not parse: " + info.status().ToString();
    return false;
  }

  // memcpy of the same size, into the buffer the decoder writes next (both pre-touched).
  std::vector<uint8_t> decoded(n, 0xA5);
  double memcpy_ns = 0;
  TimeMedianNs(
      reps,
      [&] {
        if (n != 0) std::memcpy(decoded.data(), pair.cur.data(), n);
        KeepMemory(decoded.data());
        return true;
      },
      &memcpy_ns);

  // Decode into a buffer of its own (not in place), which then must equal NEW exactly.
  codec::Decoder decoder;
  codec::DecodeOptions known;
  known.known_base_hash = base_hash;
  auto decode = [&](const codec::DecodeOptions& o) {
    status = decoder.Decode(frame_bytes, pair.base.data(), n, decoded, o);
    return status.ok();
  };
  double decode_ns = 0;
  double decode_nohint_ns = 0;
  std::memset(decoded.data(), 0xA5, n);
  if (!TimeMedianNs(
          reps, [&] { return decode({}); }, &decode_nohint_ns) ||
      !TimeMedianNs(
          reps, [&] { return decode(known); }, &decode_ns)) {
    *error = "decode failed: " + status.ToString();
    return false;
  }
  if (n != 0 && std::memcmp(decoded.data(), pair.cur.data(), n) != 0) {
    size_t at = 0;
    while (decoded[at] == pair.cur[at]) ++at;
    *error = "the decoded tensor is not bit-exact: first difference at byte " + std::to_string(at) +
             " of " + std::to_string(n);
    return false;
  }

  BaselineSizes sizes;
  Baselines baselines(codec::EncoderOptions{}.zstd_level);
  if (!baselines.Measure(pair.cur.data(), pair.base.data(), n, esize, &sizes)) {
    *error = "a zstd baseline failed";
    return false;
  }

  auto gbps = [&](double ns) { return ns > 0 ? static_cast<double>(n) / ns : 0.0; };
  const double ratio = Ratio(n, frame_size);
  const double xor_zstd = Ratio(n, sizes.xor_zstd);
  const double planes_zstd = Ratio(n, sizes.planes_zstd);
  const double pulse = Ratio(n, sizes.pulse);
  const double best = std::max({xor_zstd, planes_zstd, pulse});
  out->Add("raw_bytes", static_cast<int64_t>(n))
      .Add("encoded_bytes", static_cast<int64_t>(frame_size))
      .Add("ratio", ratio)
      .Add("chain", codec::ChainName(info->chain))
      .Add("encode_gbps", gbps(encode_ns))
      .Add("decode_gbps", gbps(decode_ns))
      .Add("memcpy_gbps", gbps(memcpy_ns))
      .Add("encode_nohint_gbps", gbps(encode_nohint_ns))
      .Add("whole_encode_gbps", gbps(whole_ns))
      .Add("whole_ratio", Ratio(n, whole_size))
      .Add("decode_nohint_gbps", gbps(decode_nohint_ns))
      .Add("baseline_xor_zstd_ratio", xor_zstd)
      .Add("baseline_planes_zstd_ratio", planes_zstd)
      .Add("baseline_pulse_ratio", pulse)
      .Add("vs_best_baseline", best > 0 ? ratio / best : 0.0);
  return true;
}

}  // namespace easysync::bench
