#pragma once
// How many CPUs this process may really use: the CPUs of its affinity mask, bounded by the CPU
// bandwidth limit of its cgroup. In a container both can be far below the host's core count
// (`docker run --cpus=1.5` sets cgroup v2 `cpu.max` to "150000 100000"; `--cpuset-cpus` narrows
// the affinity), and a thread count taken from the host oversubscribes the quota: the kernel then
// throttles the whole cgroup for the rest of each period, and the pool's spinning workers
// (engine/common/parallel.h) wait for threads that are not running.
//
// The cgroup is read as the kernel exposes it under <fs_root>/sys/fs/cgroup (the standard mount):
// cgroup v2 from the "0::<path>" line of <fs_root>/proc/self/cgroup, `cpu.max` at that path and
// at every parent up to the mount root (the smallest limit wins: a parent's limit binds its
// children); cgroup v1 from the line whose controllers include "cpu", `cpu.cfs_quota_us` /
// `cpu.cfs_period_us` likewise (quota -1 = no limit), under sys/fs/cgroup/<controllers> or
// sys/fs/cgroup/cpu. A container with its own cgroup namespace sees its cgroup as "/", the mount
// root, so the walk reads its limit there. Missing or unreadable files, and content that does not
// parse, mean no limit: this only picks a default, so it never fails.
#include <string>

namespace asl {

struct CpuBudget {
  int num_cpus = 1;           // min(num_affinity_cpus, ceil(cgroup_cpus)); never below 1
  int num_affinity_cpus = 0;  // CPUs in sched_getaffinity's mask; 0 = could not be read
  double cgroup_cpus = 0;     // the tightest cgroup limit as CPUs (quota / period); 0 = no limit
  std::string cgroup_limit;   // where that limit came from, e.g. "cgroup v2 cpu.max 150000/100000
                              // at /docker/abc"; "no cgroup CPU limit" if none
};

// Reads the cgroup files under fs_root ("/" in production; a fake tree in tests) and the calling
// thread's affinity mask. Thread-safe; never fails.
CpuBudget ReadCpuBudget(const std::string& fs_root = "/");

}  // namespace asl
