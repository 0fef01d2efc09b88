// Sample statistics and output formatting shared by the bench suites.
//
// Every suite prints a human table by default, or with --json exactly one JSON object per
// line per measured configuration and nothing else on stdout (diagnostics go to stderr).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace easysync::bench {

// The q-quantile (0 <= q <= 1) of samples by the nearest-rank method; 0 when empty.
// Reorders `samples`.
inline double Percentile(std::vector<double>& samples, double q) {
  if (samples.empty()) return 0;
  const size_t n = samples.size();
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(n)));
  rank = std::clamp<size_t>(rank, 1, n) - 1;
  std::nth_element(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(rank),
                   samples.end());
  return samples[rank];
}

// Tells the compiler that memory reachable from p is read and written here, so a copy into
// it cannot be elided or moved across the clock reads around it.
inline void KeepMemory(const void* p) { asm volatile("" : : "r"(p) : "memory"); }

inline double Median(std::vector<double> samples) { return Percentile(samples, 0.5); }

// One JSON object on one line, keys in insertion order. Keys and strings are plain ASCII
// chosen by the bench, so only '"' and '\' need escaping.
class JsonLine {
 public:
  JsonLine& Add(std::string_view key, std::string_view value) {
    Key(key);
    out_ += '"';
    for (char c : value) {
      if (c == '"' || c == '\\') out_ += '\\';
      out_ += c;
    }
    out_ += '"';
    return *this;
  }
  JsonLine& Add(std::string_view key, const char* value) {
    return Add(key, std::string_view(value));
  }
  JsonLine& Add(std::string_view key, int64_t value) {
    Key(key);
    out_ += std::to_string(value);
    return *this;
  }
  JsonLine& AddBool(std::string_view key, bool value) {
    Key(key);
    out_ += value ? "true" : "false";
    return *this;
  }
  // Non-finite numbers are not JSON: they print as null.
  JsonLine& Add(std::string_view key, double value) {
    Key(key);
    if (!std::isfinite(value)) {
      out_ += "null";
      return *this;
    }
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.6g", value);
    out_ += buf;
    return *this;
  }
  void Print() const {
    std::fputs(out_.c_str(), stdout);
    std::fputs("}\n", stdout);
    std::fflush(stdout);
  }

 private:
  void Key(std::string_view key) {
    out_ += out_.size() == 1 ? "\"" : ",\"";
    out_ += key;
    out_ += "\":";
  }
  std::string out_ = "{";
};

// A fixed-width text table: the header row, then one row per Row() call.
class Table {
 public:
  explicit Table(std::vector<std::string> columns) : columns_(std::move(columns)) {}
  void Row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  void Print() const {
    std::vector<size_t> width(columns_.size());
    for (size_t c = 0; c < columns_.size(); ++c) {
      width[c] = columns_[c].size();
      for (const auto& r : rows_) width[c] = std::max(width[c], c < r.size() ? r[c].size() : 0);
    }
    auto line = [&](const std::vector<std::string>& cells) {
      for (size_t c = 0; c < columns_.size(); ++c) {
        std::printf("%s%*s", c == 0 ? "" : "  ", static_cast<int>(width[c]),
                    c < cells.size() ? cells[c].c_str() : "");
      }
      std::printf("\n");
    };
    line(columns_);
    for (const auto& r : rows_) line(r);
    std::fflush(stdout);
  }

 private:
  std::vector<std::string> columns_;
  std::vector<std::vector<std::string>> rows_;
};

// The numbers of the JSON list `"key": [a, b, ...]` in text (a workload script's output).
inline std::vector<double> JsonNumberList(const std::string& text, const std::string& key) {
  std::vector<double> out;
  const std::string open = "\"" + key + "\": [";
  const size_t at = text.find(open);
  for (const char* p = at == std::string::npos ? nullptr : text.c_str() + at + open.size();
       p != nullptr && *p != ']' && *p != '\0';) {
    char* end = nullptr;
    const double v = std::strtod(p, &end);
    if (end == p) break;
    out.push_back(v);
    p = end + std::strspn(end, ", ");
  }
  return out;
}

inline std::string Fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

}  // namespace easysync::bench
