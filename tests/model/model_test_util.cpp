#include "tests/model/model_test_util.h"

#include <ftw.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

namespace asl::model::testing {
namespace {

std::vector<std::string>& ToRemove() {
  static std::vector<std::string> dirs;
  return dirs;
}

// Removes the generated folders after the last test (registered with gtest, which runs it once).
class CleanupEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    if (std::getenv("ASL_KEEP_TINY_MODELS") != nullptr) return;
    // Not std::filesystem::remove_all: libtorch.so exports its own copy of that symbol, which
    // wins the dynamic binding and crashes (seen with the torch 2.11 wheel).
    auto rm = [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); };
    for (const std::string& d : ToRemove()) ::nftw(d.c_str(), rm, 16, FTW_DEPTH | FTW_PHYS);
  }
};
[[maybe_unused]] auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new CleanupEnvironment);

std::string MakeTempDir(const std::string& prefix) {
  std::string tmpl = std::string(ASL_TINY_MODELS_ROOT) + "/" + prefix + ".XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return "";
  ToRemove().push_back(tmpl);
  return tmpl;
}

}  // namespace

const std::string& TinyDir() {
  static std::once_flag once;
  static std::string dir;
  static std::string error;
  std::call_once(once, [] {
    // A per-process folder: ctest may run several of these binaries at once.
    const std::string d = MakeTempDir("tiny_models");
    if (d.empty()) {
      error = "cannot create a folder under " ASL_TINY_MODELS_ROOT;
      return;
    }
    const std::string cmd = std::string("'") + ASL_PYTHON + "' '" + ASL_MAKE_TINY_MODELS + "' '" + d + "'";
    const int rc = std::system(cmd.c_str());
    if (rc != 0) {
      error = "generator failed (" + std::to_string(rc) + "): " + cmd;
      return;
    }
    dir = d;
  });
  if (dir.empty()) ADD_FAILURE() << error;
  return dir;
}

std::string ScratchDir(const std::string& name) { return MakeTempDir("scratch_" + name); }

at::Tensor Expected(const std::string& tag, const std::string& name, at::IntArrayRef shape) {
  const std::string path = TinyDir() + "/expected/" + tag + "/" + name + ".f32";
  const std::string bytes = ReadFile(path);
  at::Tensor t = at::empty(shape, at::kFloat);
  if (static_cast<int64_t>(bytes.size()) != t.numel() * 4) {
    ADD_FAILURE() << path << ": " << bytes.size() << " bytes, expected " << t.numel() * 4;
    return t.fill_(NAN);
  }
  std::memcpy(t.data_ptr<float>(), bytes.data(), bytes.size());
  return t;
}

double MaxRelDiff(const at::Tensor& actual, const at::Tensor& expected) {
  const at::Tensor a = actual.to(at::kFloat).contiguous();
  const at::Tensor b = expected.to(at::kFloat).contiguous();
  if (a.sizes() != b.sizes()) return INFINITY;
  const at::Tensor same = a.eq(b);
  const at::Tensor rel = (a - b).abs() / b.abs().clamp_min(1.0);
  return at::where(same, at::zeros_like(rel), rel).nan_to_num(INFINITY).max().item<double>();
}

}  // namespace asl::model::testing
