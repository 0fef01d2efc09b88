// py-overhead: what the Python package adds to a shared-memory update.
//
// The same ping-pong twice in one run, both sides spinning (poll wait mode), one process per
// CPU: two C++ processes through Synced<int64_t>, and two Python processes through an int
// attribute of a @SyncedObject (bench/workloads/py_ping_pong.py). Python's attribute travels
// as msgpack, C++'s as a fixed int64, so the difference also counts that encoding (~50 ns).
// Overhead per update = Python one-way p50 - C++ one-way p50. Goal: <= 5 us.
//
// Then a tensor attribute (float32, --mib MiB): written by one client and read by another
// into the tensor bound to it, from Python (torch) and from C++ (Synced<Tensor>), medians of
// --reps; with torch missing, that part is skipped and said so.
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench.h"
#include "easysync/client.h"
#include "easysync/synced.h"
#include "hub_process.h"  // BenchBinaryDir
#include "ping_pong.h"
#include "proc_util.h"
#include "stats_util.h"

namespace easysync::bench {
namespace {

struct Flags {
  bool json = false;
  int64_t iters = 20000;
  double seconds = 5;
  int64_t mib = 64;
  int64_t reps = 20;
  std::string python;
};

std::string Script() { return WorkloadScript("EASYSYNC_PY_PING_PONG", "py_ping_pong.py"); }

struct TensorTimes {
  double write_ms = NAN, read_ms = NAN;
};

TensorTimes PythonTensor(const Flags& f, const std::string& cluster) {
  int rc = 0;
  const std::string text = RunCapturingStdout(
      {f.python, Script(), "tensor", cluster, std::to_string(f.mib), std::to_string(f.reps)}, 0,
      &rc);
  const std::vector<double> w = JsonNumberList(text, "write_ms");
  const std::vector<double> r = JsonNumberList(text, "read_ms");
  if (rc != 0 || w.empty() || r.empty()) {
    std::fprintf(stderr, "easysync-bench: py-overhead: the Python tensor run failed (%d)\n", rc);
    return {};
  }
  return {Median(w), Median(r)};
}

TensorTimes CppTensor(const Flags& f, const std::string& cluster) {
  struct Holder : SyncedObject {
    Synced<Tensor> w;
    Holder(Client& c, int64_t n)
        : SyncedObject(c, "bench_cpp_tensor"), w(this, "w", Tensor(DType::kFloat32, {n})) {}
  };
  const int64_t n = f.mib * (int64_t{1} << 20) / 4;
  auto writer = shm_connect(cluster);
  auto reader = shm_connect(cluster);
  Holder a(*writer, n), b(*reader, n);
  Tensor values[2] = {Tensor(DType::kFloat32, {n}), Tensor(DType::kFloat32, {n})};
  for (int v = 0; v < 2; ++v) {
    float* p = values[v].mutable_data_as<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(v);
  }
  std::vector<double> w, r;
  for (int64_t i = 0; i < f.reps; ++i) {
    const auto t0 = Clock::now();
    a.w.set(values[i % 2]);
    const auto t1 = Clock::now();
    const Tensor got = b.w.get();  // decodes into the reader's cache, which it then shares
    const auto t2 = Clock::now();
    if (got.data_as<float>()[n - 1] != static_cast<float>(i % 2)) {
      std::fprintf(stderr, "easysync-bench: py-overhead: the C++ reader holds the wrong value\n");
      return {};
    }
    w.push_back(NanosSince(t0, t1) / 1e6);
    r.push_back(NanosSince(t1, t2) / 1e6);
  }
  return {Median(w), Median(r)};
}

// Python one-way samples in microseconds; empty on failure (why on stderr).
std::vector<double> PythonPingPong(const Flags& f, const std::string& cluster) {
  const std::string script = Script();
  const int64_t warmup = std::max<int64_t>(1000, f.iters / 10);
  const pid_t echo = SpawnArgs({f.python, script, "echo", cluster}, 1, nullptr);
  int rc_ping = 0;
  const std::string text =
      RunCapturingStdout({f.python, script, "ping", cluster, std::to_string(warmup),
                          std::to_string(f.iters), std::to_string(f.seconds)},
                         0, &rc_ping);
  if (rc_ping != 0 && echo > 0) kill(echo, SIGKILL);
  const int rc_echo = WaitExitCode(echo);
  std::vector<double> samples = JsonNumberList(text, "one_way_us");
  if (rc_ping != 0 || rc_echo != 0 || samples.empty()) {
    std::fprintf(stderr,
                 "easysync-bench: py-overhead: the Python ping-pong failed (ping %d, echo %d)%s\n",
                 rc_ping, rc_echo,
                 rc_ping == 3 ? ": easysync is not importable by --python (pip install .)" : "");
    samples.clear();
  }
  return samples;
}

std::vector<double> CppPingPong(const Flags& f, const std::string& cluster) {
  ShmOptions options;
  options.wait_mode = WaitMode::kPoll;
  const RoundPlan plan{std::max<int64_t>(1000, f.iters / 10), std::chrono::milliseconds(0), f.iters,
                       std::chrono::duration<double>(f.seconds)};
  const pid_t pid = ForkPinned([&] {
    auto client = shm_connect(cluster, options);
    return PingPong(*client, "bench_cpp_overhead").Echo();
  });
  if (pid < 0) return {};
  std::vector<double> samples;
  bool ok = false;
  try {
    auto client = shm_connect(cluster, options);
    PingPong pp(*client, "bench_cpp_overhead");
    ok =
        pp.WaitReady() && MeasureRoundTrips(plan, &samples, [&](int64_t i) { return pp.Round(i); });
    pp.Finish();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "easysync-bench: py-overhead: %s\n", e.what());
  }
  if (!JoinChild(pid, !ok) || !ok) samples.clear();
  return samples;
}

int Usage(const char* why) {
  if (why != nullptr) std::fprintf(stderr, "easysync-bench: py-overhead: %s\n", why);
  std::fputs(
      "usage: easysync-bench py-overhead [--json] [--iters N (20000)] [--seconds S (5)]\n"
      "                                  [--mib M (64)] [--reps N (20)]\n"
      "                                  [--python PATH ($EASYSYNC_PYTHON or python3)]\n",
      why != nullptr ? stderr : stdout);
  return why != nullptr ? 2 : 0;
}

}  // namespace

int RunPyOverhead(int argc, char** argv, int first) {
  Flags f;
  if (const char* env = std::getenv("EASYSYNC_PYTHON"); env != nullptr && *env != '\0') {
    f.python = env;
  } else {
    f.python = "python3";
  }
  for (int i = first; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") return Usage(nullptr);
    if (flag == "--json") {
      f.json = true;
      continue;
    }
    if (i + 1 >= argc) return Usage((flag + " needs a value").c_str());
    const char* value = argv[++i];
    char* end = nullptr;
    if (flag == "--python") {
      f.python = value;
    } else if (flag == "--iters") {
      f.iters = std::strtoll(value, &end, 10);
      if (*end != '\0' || f.iters <= 0) return Usage("--iters needs a positive integer");
    } else if (flag == "--mib" || flag == "--reps") {
      const int64_t v = std::strtoll(value, &end, 10);
      if (*end != '\0' || v <= 0 || v > 65536) return Usage((flag + " needs 1..65536").c_str());
      (flag == "--mib" ? f.mib : f.reps) = v;
    } else if (flag == "--seconds") {
      f.seconds = std::strtod(value, &end);
      if (*end != '\0' || !(f.seconds > 0)) return Usage("--seconds needs a positive number");
    } else {
      return Usage(("unknown flag " + flag).c_str());
    }
  }
  const std::string base = "bench_pyo_" + std::to_string(getpid());
  std::vector<double> cpp = CppPingPong(f, base + "_cpp");
  std::vector<double> py = PythonPingPong(f, base + "_py");
  if (cpp.empty() || py.empty()) return 1;
  const double cpp_p50 = Percentile(cpp, 0.5), cpp_p99 = Percentile(cpp, 0.99);
  const double py_p50 = Percentile(py, 0.5), py_p99 = Percentile(py, 0.99);
  const double overhead = py_p50 - cpp_p50;
  const TensorTimes cpp_t = CppTensor(f, base + "_cppt");
  const TensorTimes py_t = PythonTensor(f, base + "_pyt");
  if (f.json) {
    std::printf(
        "{\"suite\": \"py-overhead\", \"mode\": \"shm-poll\", \"cpp_p50_us\": %.3f, "
        "\"cpp_p99_us\": %.3f, \"python_p50_us\": %.3f, \"python_p99_us\": %.3f, "
        "\"overhead_p50_us\": %.3f, \"goal_us\": 5, \"goal_met\": %s, \"cpp_samples\": %zu, "
        "\"python_samples\": %zu}\n",
        cpp_p50, cpp_p99, py_p50, py_p99, overhead, overhead <= 5 ? "true" : "false", cpp.size(),
        py.size());
  } else {
    std::printf("py-overhead (shared memory, poll): one-way latency of an attribute update\n");
    std::printf("  %-8s p50 %8.2f us  p99 %8.2f us  (%zu samples)\n", "C++", cpp_p50, cpp_p99,
                cpp.size());
    std::printf("  %-8s p50 %8.2f us  p99 %8.2f us  (%zu samples)\n", "Python", py_p50, py_p99,
                py.size());
    std::printf("  Python adds %.2f us per update at p50 (goal <= 5 us: %s)\n", overhead,
                overhead <= 5 ? "met" : "missed");
  }
  if (f.json) {
    auto num = [](double v) { return std::isnan(v) ? std::string("null") : Fixed(v, 3); };
    std::printf(
        "{\"suite\": \"py-overhead\", \"mode\": \"shm-tensor\", \"mib\": %lld, "
        "\"cpp_write_ms\": %s, \"cpp_read_ms\": %s, \"python_write_ms\": %s, "
        "\"python_read_ms\": %s}\n",
        static_cast<long long>(f.mib), num(cpp_t.write_ms).c_str(), num(cpp_t.read_ms).c_str(),
        num(py_t.write_ms).c_str(), num(py_t.read_ms).c_str());
  } else {
    std::printf("tensor attribute, float32, %lld MiB (median of %lld):\n",
                static_cast<long long>(f.mib), static_cast<long long>(f.reps));
    std::printf("  %-8s write %8.2f ms  read %8.2f ms\n", "C++", cpp_t.write_ms, cpp_t.read_ms);
    std::printf("  %-8s write %8.2f ms  read %8.2f ms%s\n", "Python", py_t.write_ms, py_t.read_ms,
                std::isnan(py_t.read_ms) ? "  (not run: see above)" : "");
  }
  return 0;
}

}  // namespace easysync::bench
