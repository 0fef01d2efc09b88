// codec: the tensor delta codec on real or synthetic updates, against memcpy and three zstd
// baselines measured in the same run (or, with --device cuda, the device diff kernel against a
// device-to-device copy). See CodecUsage() for the modes and flags.
//
// Exit status: 0 success; 1 a measurement failed (unreadable input, codec error, a round trip
// that is not bit-exact); 2 bad usage; 3 --device cuda without a usable device.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bench.h"
#include "codec_bench.h"
#include "stats_util.h"

namespace easysync::bench {

const Record::Field* Record::Find(std::string_view key) const {
  for (const Field& f : fields_) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

Record& Record::Put(Field f) {
  fields_.push_back(std::move(f));
  return *this;
}

std::optional<DType> ParseDType(std::string_view name) {
  if (const auto t = DTypeFromName(name)) return t;
  static constexpr std::pair<std::string_view, DType> kAliases[] = {
      {"f32", DType::kFloat32},
      {"f16", DType::kFloat16},
      {"bf16", DType::kBFloat16},
      {"f64", DType::kFloat64},
      {"i8", DType::kInt8},
      {"i16", DType::kInt16},
      {"i32", DType::kInt32},
      {"i64", DType::kInt64},
      {"u8", DType::kUInt8},
      {"fp8_e4m3", DType::kFloat8E4M3},
      {"fp8_e5m2", DType::kFloat8E5M2},
  };
  for (const auto& [alias, t] : kAliases) {
    if (alias == name) return t;
  }
  return std::nullopt;
}

bool ReadFile(const std::filesystem::path& path, std::vector<uint8_t>* out, std::string* error) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    *error = "cannot open " + path.string();
    return false;
  }
  const std::streamoff size = in.tellg();
  out->resize(static_cast<size_t>(size));
  in.seekg(0);
  if (size > 0 && !in.read(reinterpret_cast<char*>(out->data()), size)) {
    *error = "cannot read " + path.string();
    return false;
  }
  return true;
}

bool ListSteps(const std::string& dir, std::vector<std::filesystem::path>* files,
               std::string* error) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && name.size() > 4 && name.ends_with(".bin")) {
      files->push_back(entry.path());
    }
  }
  if (ec) {
    *error = "cannot list " + dir + ": " + ec.message();
    return false;
  }
  std::sort(files->begin(), files->end());
  if (files->size() < 2) {
    *error = dir + " has " + std::to_string(files->size()) + " *.bin files; a pair needs two";
    return false;
  }
  return true;
}

namespace {

constexpr size_t kDefaultDeviceBlockBytes = 256;

void CodecUsage(std::FILE* out) {
  std::fputs(
      "usage: easysync-bench codec MODE [--dtype NAME] [--device cpu|cuda] [--iters N]\n"
      "                            [--block-bytes N] [--json]\n"
      "modes (exactly one):\n"
      "  --base FILE --new FILE  encode NEW against BASE (raw little-endian elements)\n"
      "  --steps DIR             every consecutive pair of DIR's *.bin files, sorted by name,\n"
      "                          then a line with the medians (\"pair\":\"median\")\n"
      "  --synthetic NAME        a generated pair: rl-bf16 (64 MiB bfloat16, 1.5% of elements\n"
      "                          move by 1 ULP), dense-f32 (64 MiB float32, every element\n"
      "                          changes a little) or noise-bf16 (64 MiB of random bits, base\n"
      "                          and new apart); --dtype does not apply\n"
      "flags:\n"
      "  --dtype NAME     float32 float16 bfloat16 float64 int8 int16 int32 int64 uint8 bool\n"
      "                   float8_e4m3 float8_e5m2, or f32 f16 bf16 f64 i8 i16 i32 i64 u8\n"
      "                   fp8_e4m3 fp8_e5m2\n"
      "  --device cuda    the XOR diff + change map kernel against a device-to-device copy,\n"
      "                   and the bytes left after compaction (exit 3 without a device)\n"
      "  --block-bytes N  --device cuda: change map block size (default 256)\n"
      "  --iters N        timed repetitions per figure, after a warm-up (default 9)\n"
      "  --json           one JSON object per line, nothing else on stdout\n"
      "figures (host): NEW against BASE encoded and decoded (enc, dec), NEW alone as a whole\n"
      "value (whole: what a first sync or a RESYNC sends), memcpy, and the baselines' ratios\n",
      out);
}

int BadUsage(const std::string& why) {
  std::fprintf(stderr, "easysync-bench codec: %s\n", why.c_str());
  CodecUsage(stderr);
  return 2;
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "easysync-bench codec: %s\n", why.c_str());
  return 1;
}

struct CodecArgs {
  std::string base_file, new_file, steps_dir, synthetic;
  std::optional<DType> dtype;
  bool device = false;
  bool json = false;
  size_t block_bytes = kDefaultDeviceBlockBytes;
  Reps reps;
};

// A positive integer in full, at most max.
bool ParseCount(const char* s, int64_t max, int64_t* out) {
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (end == s || *end != '\0' || v <= 0 || v > max) return false;
  *out = v;
  return true;
}

// Parses argv[first..argc); returns an exit status for bad usage, or nothing.
std::optional<int> ParseArgs(int argc, char** argv, int first, CodecArgs* a) {
  for (int i = first; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--json") {
      a->json = true;
      continue;
    }
    if (flag == "-h" || flag == "--help") {
      CodecUsage(stdout);
      return 0;
    }
    if (i + 1 >= argc) return BadUsage(std::string(flag) + " needs a value");
    const char* value = argv[++i];
    int64_t count = 0;
    if (flag == "--base") {
      a->base_file = value;
    } else if (flag == "--new") {
      a->new_file = value;
    } else if (flag == "--steps") {
      a->steps_dir = value;
    } else if (flag == "--synthetic") {
      a->synthetic = value;
      if (std::find(std::begin(kSyntheticNames), std::end(kSyntheticNames), a->synthetic) ==
          std::end(kSyntheticNames)) {
        return BadUsage("unknown synthetic pair '" + a->synthetic + "'");
      }
    } else if (flag == "--dtype") {
      a->dtype = ParseDType(value);
      if (!a->dtype) return BadUsage("unknown dtype '" + std::string(value) + "'");
    } else if (flag == "--device") {
      if (std::string_view(value) != "cpu" && std::string_view(value) != "cuda") {
        return BadUsage("--device is cpu or cuda");
      }
      a->device = std::string_view(value) == "cuda";
    } else if (flag == "--iters") {
      if (!ParseCount(value, 100000, &count)) return BadUsage("--iters needs a positive integer");
      a->reps.timed = static_cast<int>(count);
    } else if (flag == "--block-bytes") {
      if (!ParseCount(value, int64_t{1} << 30, &count)) {
        return BadUsage("--block-bytes needs a positive integer");
      }
      a->block_bytes = static_cast<size_t>(count);
    } else {
      return BadUsage("unknown flag '" + std::string(flag) + "'");
    }
  }
  const bool pair = !a->base_file.empty() || !a->new_file.empty();
  const int modes =
      (pair ? 1 : 0) + (a->steps_dir.empty() ? 0 : 1) + (a->synthetic.empty() ? 0 : 1);
  if (modes != 1) return BadUsage("give exactly one of --base/--new, --steps, --synthetic");
  if (pair && (a->base_file.empty() || a->new_file.empty())) {
    return BadUsage("--base and --new go together");
  }
  if (!a->synthetic.empty() && a->dtype) return BadUsage("--dtype does not apply to --synthetic");
  if (a->synthetic.empty() && !a->dtype) return BadUsage("--dtype is required");
  return std::nullopt;
}

// The median line of a series: the median of every numeric field, the most frequent value of
// every text field, and "pair":"median".
Record MedianRecord(const std::vector<Record>& records) {
  Record median;
  for (const Record::Field& f : records.front().fields()) {
    std::vector<double> values;
    std::map<std::string, int> texts;
    for (const Record& r : records) {
      const Record::Field* g = r.Find(f.key);
      if (g == nullptr) continue;
      values.push_back(g->kind == Record::Kind::kInt ? static_cast<double>(g->i) : g->d);
      ++texts[g->s];
    }
    if (f.key == "pair") {
      median.Add("pair", std::string("median"));
    } else if (f.kind == Record::Kind::kText) {
      auto most = std::max_element(texts.begin(), texts.end(), [](const auto& x, const auto& y) {
        return x.second < y.second;
      });
      median.Add(f.key, most->first);
    } else if (f.kind == Record::Kind::kInt) {
      // Nearest-rank: the median is one of the samples, so it stays an exact integer.
      median.Add(f.key, static_cast<int64_t>(Median(values)));
    } else {
      median.Add(f.key, Median(values));
    }
  }
  return median;
}

void PrintJson(const Record& r) {
  JsonLine line;
  for (const Record::Field& f : r.fields()) {
    switch (f.kind) {
      case Record::Kind::kInt:
        line.Add(f.key, f.i);
        break;
      case Record::Kind::kReal:
        line.Add(f.key, f.d);
        break;
      case Record::Kind::kText:
        line.Add(f.key, std::string_view(f.s));
        break;
    }
  }
  line.Print();
}

// Table columns: header, field, decimals (for real fields).
struct Column {
  const char* header;
  const char* key;
  int decimals;
};

constexpr Column kHostColumns[] = {
    {"pair", "pair", 0},
    {"chain", "chain", 0},
    {"raw_bytes", "raw_bytes", 0},
    {"encoded", "encoded_bytes", 0},
    {"ratio", "ratio", 1},
    {"enc_GB/s", "encode_gbps", 2},
    {"dec_GB/s", "decode_gbps", 2},
    {"whole_GB/s", "whole_encode_gbps", 2},
    {"whole_ratio", "whole_ratio", 2},
    {"memcpy_GB/s", "memcpy_gbps", 2},
    {"xor+zstd", "baseline_xor_zstd_ratio", 1},
    {"planes+zstd", "baseline_planes_zstd_ratio", 1},
    {"pulse", "baseline_pulse_ratio", 1},
    {"vs_best", "vs_best_baseline", 2},
};

constexpr Column kDeviceColumns[] = {
    {"pair", "pair", 0},
    {"raw_bytes", "raw_bytes", 0},
    {"block", "block_bytes", 0},
    {"diff_GB/s", "diff_gbps", 1},
    {"d2d_GB/s", "d2d_copy_gbps", 1},
    {"diff/copy", "diff_vs_copy", 3},
    {"changed_blocks", "changed_blocks", 0},
    {"compacted_bytes", "compacted_bytes", 0},
    {"compacted/raw", "compacted_fraction", 4},
};

template <size_t N>
void PrintTable(const Column (&columns)[N], const std::vector<Record>& records) {
  std::vector<std::string> headers;
  for (const Column& c : columns) headers.emplace_back(c.header);
  Table table(std::move(headers));
  for (const Record& r : records) {
    std::vector<std::string> cells;
    for (const Column& c : columns) {
      const Record::Field* f = r.Find(c.key);
      if (f == nullptr) {
        cells.emplace_back("-");
      } else if (f->kind == Record::Kind::kInt) {
        cells.push_back(std::to_string(f->i));
      } else if (f->kind == Record::Kind::kReal) {
        cells.push_back(Fixed(f->d, c.decimals));
      } else {
        cells.push_back(f->s);
      }
    }
    table.Row(std::move(cells));
  }
  table.Print();
}

}  // namespace

int RunCodec(int argc, char** argv, int first) {
  CodecArgs a;
  if (std::optional<int> exit = ParseArgs(argc, argv, first, &a)) return *exit;
  std::string why;
  if (a.device && !CudaDeviceUsable(&why)) {
    std::fprintf(stderr, "easysync-bench codec: no CUDA device: %s\n", why.c_str());
    return 3;
  }

  std::vector<Record> records;
  std::string error;
  TensorPair pair;
  auto run = [&]() -> bool {
    const size_t esize = DTypeSize(pair.dtype);
    if (pair.base.size() != pair.cur.size()) {
      error = pair.label + ": base and new differ in size (" + std::to_string(pair.base.size()) +
              " and " + std::to_string(pair.cur.size()) + " bytes)";
      return false;
    }
    if (pair.cur.size() % esize != 0) {
      error = pair.label + ": " + std::to_string(pair.cur.size()) + " bytes are not whole " +
              std::string(DTypeName(pair.dtype)) + " elements";
      return false;
    }
    Record r;
    r.Add("suite", std::string("codec"))
        .Add("pair", pair.label)
        .Add("dtype", std::string(DTypeName(pair.dtype)));
    const bool ok = a.device ? MeasureDevicePair(pair, a.reps, a.block_bytes, &r, &error)
                             : MeasureHostPair(pair, a.reps, &r, &error);
    if (!ok) {
      error = pair.label + ": " + error;
      return false;
    }
    if (a.json) PrintJson(r);
    records.push_back(std::move(r));
    return true;
  };

  bool series = false;
  if (!a.synthetic.empty()) {
    MakeSyntheticPair(a.synthetic, &pair);
    if (!run()) return Fail(error);
  } else if (!a.base_file.empty()) {
    pair.dtype = *a.dtype;
    pair.label = std::filesystem::path(a.base_file).filename().string() + "->" +
                 std::filesystem::path(a.new_file).filename().string();
    if (!ReadFile(a.base_file, &pair.base, &error) || !ReadFile(a.new_file, &pair.cur, &error) ||
        !run()) {
      return Fail(error);
    }
  } else {
    std::vector<std::filesystem::path> files;
    if (!ListSteps(a.steps_dir, &files, &error)) return Fail(error);
    pair.dtype = *a.dtype;
    if (!ReadFile(files[0], &pair.cur, &error)) return Fail(error);
    for (size_t k = 1; k < files.size(); ++k) {
      pair.base.swap(pair.cur);  // the new value of one step is the base of the next
      pair.label = files[k - 1].filename().string() + "->" + files[k].filename().string();
      if (!ReadFile(files[k], &pair.cur, &error) || !run()) return Fail(error);
    }
    series = true;
  }
  if (series) {
    records.push_back(MedianRecord(records));
    if (a.json) PrintJson(records.back());
  }
  if (a.json) return 0;

  const Record& first_record = records.front();
  std::printf("codec%s: %s, medians of %d timed runs after %d warm-up\n", a.device ? " (cuda)" : "",
              first_record.Find("dtype")->s.c_str(), a.reps.timed, a.reps.warmup);
  if (a.device) {
    PrintTable(kDeviceColumns, records);
  } else {
    PrintTable(kHostColumns, records);
  }
  return 0;
}

}  // namespace easysync::bench
