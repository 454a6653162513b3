// asl::ReadCpuBudget (engine/common/cpu_quota.h) on fake cgroup trees: the default thread count.
#include "engine/common/cpu_quota.h"

#include <ftw.h>
#include <sched.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace asl {
namespace {

int AffinityCount() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 0;
  return CPU_COUNT(&set);
}

class CpuBudgetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/cpu_quota.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
  }
  void TearDown() override {
    // Not std::filesystem::remove_all: libtorch.so exports its own copy, which crashes.
    auto rm = [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); };
    ::nftw(root_.c_str(), rm, 16, FTW_DEPTH | FTW_PHYS);
  }
  // Writes root_/<path> with `text`, creating its folders.
  void Write(const std::string& path, const std::string& text) {
    const std::filesystem::path p = std::filesystem::path(root_) / path;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  // The budget, checked against what the affinity mask allows.
  CpuBudget Read(int want_limit_cpus) {
    CpuBudget b = ReadCpuBudget(root_);
    EXPECT_EQ(b.num_affinity_cpus, AffinityCount());
    const int affinity = std::max(1, b.num_affinity_cpus);
    EXPECT_EQ(b.num_cpus, want_limit_cpus > 0 ? std::min(affinity, want_limit_cpus) : affinity);
    return b;
  }
  std::string root_;
};

TEST_F(CpuBudgetTest, V2LimitOfOneCpu) {
  Write("proc/self/cgroup", "0::/kubepods/pod1\n");
  Write("sys/fs/cgroup/kubepods/pod1/cpu.max", "100000 100000\n");
  const CpuBudget b = Read(1);
  EXPECT_EQ(b.num_cpus, 1);
  EXPECT_DOUBLE_EQ(b.cgroup_cpus, 1.0);
  EXPECT_EQ(b.cgroup_limit, "cgroup v2 cpu.max 100000/100000 at /kubepods/pod1");
}

TEST_F(CpuBudgetTest, V2MaxIsNoLimit) {
  Write("proc/self/cgroup", "0::/a\n");
  Write("sys/fs/cgroup/a/cpu.max", "max 100000\n");
  Write("sys/fs/cgroup/cpu.max", "max 100000\n");
  const CpuBudget b = Read(0);
  EXPECT_EQ(b.cgroup_cpus, 0);
  EXPECT_EQ(b.cgroup_limit, "no cgroup CPU limit");
}

TEST_F(CpuBudgetTest, V2FractionalQuotaRoundsUp) {
  Write("proc/self/cgroup", "0::/a\n");
  Write("sys/fs/cgroup/a/cpu.max", "150000 100000\n");
  const CpuBudget b = Read(2);
  EXPECT_DOUBLE_EQ(b.cgroup_cpus, 1.5);
  EXPECT_EQ(b.cgroup_limit, "cgroup v2 cpu.max 150000/100000 at /a");
}

TEST_F(CpuBudgetTest, V2TightestAncestorWins) {
  Write("proc/self/cgroup", "0::/a/b/c\n");
  Write("sys/fs/cgroup/a/b/c/cpu.max", "max 100000\n");
  Write("sys/fs/cgroup/a/b/cpu.max", "300000 100000\n");
  Write("sys/fs/cgroup/a/cpu.max", "50000 100000\n");
  Write("sys/fs/cgroup/cpu.max", "400000 100000\n");
  const CpuBudget b = Read(1);
  EXPECT_DOUBLE_EQ(b.cgroup_cpus, 0.5);
  EXPECT_EQ(b.cgroup_limit, "cgroup v2 cpu.max 50000/100000 at /a");
}

TEST_F(CpuBudgetTest, V2NamespacedContainerReadsTheMountRoot) {
  // A container with its own cgroup namespace sees its cgroup as "/".
  Write("proc/self/cgroup", "0::/\n");
  Write("sys/fs/cgroup/cpu.max", "200000 100000\n");
  const CpuBudget b = Read(2);
  EXPECT_EQ(b.cgroup_limit, "cgroup v2 cpu.max 200000/100000 at /");
}

TEST_F(CpuBudgetTest, V2PathMissingUnderTheMountFallsBackToItsParents) {
  // Without a cgroup namespace the path names the host's hierarchy, which the mount does not hold.
  Write("proc/self/cgroup", "0::/system.slice/docker-abc.scope\n");
  Write("sys/fs/cgroup/cpu.max", "100000 100000\n");
  EXPECT_EQ(Read(1).cgroup_limit, "cgroup v2 cpu.max 100000/100000 at /");
}

TEST_F(CpuBudgetTest, V1CfsQuota) {
  Write("proc/self/cgroup", "12:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n0::/\n");
  Write("sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_quota_us", "-1\n");
  Write("sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_period_us", "100000\n");
  Write("sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_quota_us", "250000\n");
  Write("sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_period_us", "100000\n");
  const CpuBudget b = Read(3);
  EXPECT_DOUBLE_EQ(b.cgroup_cpus, 2.5);
  EXPECT_EQ(b.cgroup_limit, "cgroup v1 cfs quota 250000/100000 at /docker");
}

TEST_F(CpuBudgetTest, V1UnderTheCpuLinkAndMinusOneIsNoLimit) {
  Write("proc/self/cgroup", "3:cpu:/x\n");
  Write("sys/fs/cgroup/cpu/x/cpu.cfs_quota_us", "-1\n");
  Write("sys/fs/cgroup/cpu/x/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(Read(0).cgroup_limit, "no cgroup CPU limit");
  Write("sys/fs/cgroup/cpu/x/cpu.cfs_quota_us", "100000\n");
  EXPECT_EQ(Read(1).cgroup_limit, "cgroup v1 cfs quota 100000/100000 at /x");
}

TEST_F(CpuBudgetTest, V1AndV2TogetherTakeTheSmaller) {
  Write("proc/self/cgroup", "2:cpu:/\n0::/\n");
  Write("sys/fs/cgroup/cpu.max", "300000 100000\n");
  Write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "200000\n");
  Write("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(Read(2).cgroup_limit, "cgroup v1 cfs quota 200000/100000 at /");
}

TEST_F(CpuBudgetTest, MissingFilesAreNoLimit) {
  EXPECT_EQ(Read(0).cgroup_limit, "no cgroup CPU limit");  // no proc/self/cgroup at all
  Write("proc/self/cgroup", "0::/a\n1:cpu:/a\n");
  EXPECT_EQ(Read(0).cgroup_limit, "no cgroup CPU limit");  // no cpu.max, no cfs files
  Write("sys/fs/cgroup/cpu/a/cpu.cfs_quota_us", "100000\n");
  EXPECT_EQ(Read(0).cgroup_limit, "no cgroup CPU limit");  // quota without its period
}

TEST_F(CpuBudgetTest, GarbageIsNoLimit) {
  Write("proc/self/cgroup", "0::/a\nnot a cgroup line\n7:cpu\n");
  for (const char* text : {"", "lots 100000", "150000", "150000 100000 7", "0 100000", "-5 100000", "150000 abc",
                           "150000 0", "1.5 1", "99999999999999999999 100000"}) {
    Write("sys/fs/cgroup/a/cpu.max", text);
    EXPECT_EQ(Read(0).cgroup_limit, "no cgroup CPU limit") << "cpu.max '" << text << "'";
  }
  Write("proc/self/cgroup", "1:cpu:/b\n");
  Write("sys/fs/cgroup/cpu/b/cpu.cfs_quota_us", "twelve\n");
  Write("sys/fs/cgroup/cpu/b/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(Read(0).cgroup_limit, "no cgroup CPU limit");
}

TEST_F(CpuBudgetTest, NeverBelowOneCpu) {
  Write("proc/self/cgroup", "0::/\n");
  Write("sys/fs/cgroup/cpu.max", "1000 100000\n");
  const CpuBudget b = Read(1);
  EXPECT_EQ(b.num_cpus, 1);
  EXPECT_DOUBLE_EQ(b.cgroup_cpus, 0.01);
}

TEST(CpuBudget, ThisMachine) {
  const CpuBudget b = ReadCpuBudget();
  EXPECT_GE(b.num_cpus, 1);
  EXPECT_LE(b.num_cpus, std::max(1, AffinityCount()));
  EXPECT_FALSE(b.cgroup_limit.empty());
}

}  // namespace
}  // namespace asl
