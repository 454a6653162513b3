#include "engine/common/cpu_quota.h"

#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

namespace asl {
namespace {

std::optional<int64_t> ParseInt(const std::string& s) {
  int64_t v = 0;
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, v);
  if (ec != std::errc() || p != end) return std::nullopt;
  return v;
}

// The whitespace-separated words of a small file; nullopt if it cannot be opened.
std::optional<std::vector<std::string>> ReadWords(const std::string& file) {
  std::ifstream in(file);
  if (!in) return std::nullopt;
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

struct Limit {
  int64_t quota = 0, period = 0;
  double cpus() const { return static_cast<double>(quota) / static_cast<double>(period); }
};

// cgroup v2 cpu.max: "$MAX $PERIOD", $MAX "max" = no limit.
std::optional<Limit> ReadCpuMax(const std::string& dir) {
  auto words = ReadWords(dir + "/cpu.max");
  if (!words || words->size() != 2 || (*words)[0] == "max") return std::nullopt;
  auto quota = ParseInt((*words)[0]), period = ParseInt((*words)[1]);
  if (!quota || !period || *quota <= 0 || *period <= 0) return std::nullopt;
  return Limit{*quota, *period};
}

// cgroup v1: cpu.cfs_quota_us (-1 = no limit) over cpu.cfs_period_us.
std::optional<Limit> ReadCfsQuota(const std::string& dir) {
  auto q = ReadWords(dir + "/cpu.cfs_quota_us"), p = ReadWords(dir + "/cpu.cfs_period_us");
  if (!q || !p || q->size() != 1 || p->size() != 1) return std::nullopt;
  auto quota = ParseInt((*q)[0]), period = ParseInt((*p)[0]);
  if (!quota || !period || *quota <= 0 || *period <= 0) return std::nullopt;
  return Limit{*quota, *period};
}

// The cgroup path and its parents, deepest first: "/a/b" -> "/a/b", "/a", "".
std::vector<std::string> SelfAndParents(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  if (path == "/") path.clear();
  std::vector<std::string> out;
  for (;;) {
    out.push_back(path);
    const size_t slash = path.rfind('/');
    if (path.empty() || slash == std::string::npos) break;
    path.resize(slash);
  }
  return out;
}

int AffinityCpus() {
  for (int n = 1024; n <= (1 << 16); n *= 2) {
    cpu_set_t* set = CPU_ALLOC(n);
    if (set == nullptr) return 0;
    const size_t size = CPU_ALLOC_SIZE(n);
    const int rc = sched_getaffinity(0, size, set);
    const int count = rc == 0 ? CPU_COUNT_S(size, set) : 0;
    CPU_FREE(set);
    if (rc == 0) return count;
    if (errno != EINVAL) return 0;  // EINVAL: the kernel's mask is larger than ours
  }
  return 0;
}

}  // namespace

CpuBudget ReadCpuBudget(const std::string& fs_root) {
  CpuBudget b;
  const std::string root = fs_root.empty() || fs_root.back() != '/' ? fs_root + "/" : fs_root;
  const std::string mount = root + "sys/fs/cgroup";
  std::optional<Limit> best;
  auto consider = [&](std::optional<Limit> l, const std::string& what, const std::string& path) {
    if (!l || (best && l->cpus() >= best->cpus())) return;
    best = l;
    b.cgroup_limit = what + " " + std::to_string(l->quota) + "/" + std::to_string(l->period) + " at " +
                     (path.empty() ? "/" : path);
  };
  std::ifstream cgroups(root + "proc/self/cgroup");
  for (std::string line; std::getline(cgroups, line);) {
    // "hierarchy-ID:controller-list:cgroup-path" (cgroups(7)); v2's line is "0::<path>".
    const size_t c1 = line.find(':'), c2 = c1 == std::string::npos ? c1 : line.find(':', c1 + 1);
    if (c2 == std::string::npos) continue;
    const std::string controllers = line.substr(c1 + 1, c2 - c1 - 1), path = line.substr(c2 + 1);
    if (path.empty() || path[0] != '/') continue;
    if (line.compare(0, c1, "0") == 0 && controllers.empty()) {
      for (const std::string& p : SelfAndParents(path)) consider(ReadCpuMax(mount + p), "cgroup v2 cpu.max", p);
      continue;
    }
    std::vector<std::string> names;
    std::stringstream ss(controllers);
    for (std::string n; std::getline(ss, n, ',');) names.push_back(n);
    if (std::find(names.begin(), names.end(), "cpu") == names.end()) continue;
    // Mounted under the list's name ("cpu,cpuacct"), often with a "cpu" link beside it.
    for (const std::string& dir : {mount + "/" + controllers, mount + "/cpu"}) {
      for (const std::string& p : SelfAndParents(path)) consider(ReadCfsQuota(dir + p), "cgroup v1 cfs quota", p);
    }
  }
  b.num_affinity_cpus = AffinityCpus();
  int64_t cpus = b.num_affinity_cpus > 0 ? b.num_affinity_cpus : std::thread::hardware_concurrency();
  if (best) {
    b.cgroup_cpus = best->cpus();
    const int64_t quota_cpus = (best->quota + best->period - 1) / best->period;  // 1.5 CPUs -> 2 threads
    cpus = cpus > 0 ? std::min(cpus, quota_cpus) : quota_cpus;
  } else {
    b.cgroup_limit = "no cgroup CPU limit";
  }
  b.num_cpus = static_cast<int>(std::clamp<int64_t>(cpus, 1, 1 << 16));
  return b;
}

}  // namespace asl
