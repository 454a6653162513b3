// GGUF parsing, metadata getters, dequantisation against gguf-py, and hostile input.
#include <gtest/gtest.h>

#include <random>

#include "engine/model/gguf.h"
#include "engine/model/model_loader.h"
#include "engine/model/quant.h"
#include "tests/model/model_test_util.h"

namespace asl::model {
namespace {

using namespace asl::model::testing;

TEST(Quant, EveryTypeMatchesGgufPy) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto g = GgufFile::Open(dir + "/quants.gguf");
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  int checked = 0;
  for (const GgufTensorInfo& info : (*g)->tensors()) {
    if (info.name == "u.IQ4_NL") continue;
    SCOPED_TRACE(info.name);
    auto t = (*g)->LoadTensor(info);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->scalar_type(), at::kFloat);
    EXPECT_EQ(t->sizes().vec(), info.shape);
    const at::Tensor want = Expected("quants", info.name, info.shape);
    const bool exact = info.type == 0 || info.type == 1 || info.type == 30;  // F32, F16, BF16
    const double diff = MaxRelDiff(*t, want);
    if (exact) {
      EXPECT_EQ(diff, 0.0) << GgmlTypeName(info.type);
    } else {
      EXPECT_LE(diff, 1e-6) << GgmlTypeName(info.type);
    }
    ++checked;
  }
  EXPECT_EQ(checked, 12);
  EXPECT_EQ((*g)->FindTensor("q.F32")->shape, (std::vector<int64_t>{3, 512}));
  EXPECT_EQ((*g)->FindTensor("q.F32_3d")->shape, (std::vector<int64_t>{2, 3, 64}));
  EXPECT_EQ((*g)->FindTensor("q.Q6_K")->nbytes, 3u * 2 * 210);
}

TEST(Quant, UnsupportedTypeIsUnimplemented) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto g = GgufFile::Open(dir + "/quants.gguf");
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  auto t = (*g)->LoadTensor(*(*g)->FindTensor("u.IQ4_NL"));
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(Contains(t.status().message(), "IQ4_NL"));
  EXPECT_TRUE(Contains(t.status().message(), "'u.IQ4_NL'"));
  EXPECT_TRUE(Contains(t.status().message(), "quants.gguf"));
}

TEST(Quant, DequantizeChecksSizesAndTypes) {
  std::vector<uint8_t> src(64, 0);
  std::vector<float> dst(64, 7.0f);
  EXPECT_EQ(Dequantize(2, src.data(), 17, 32, dst.data()).code(), StatusCode::kInvalidArgument);  // Q4_0 bytes
  EXPECT_EQ(Dequantize(2, src.data(), 18, 33, dst.data()).code(), StatusCode::kInvalidArgument);  // not a block multiple
  EXPECT_EQ(Dequantize(99, src.data(), 4, 1, dst.data()).code(), StatusCode::kInvalidArgument);
  const Status q5 = Dequantize(6, src.data(), 22, 32, dst.data());
  EXPECT_EQ(q5.code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(Contains(q5.message(), "Q5_0"));
  EXPECT_EQ(dst[0], 7.0f);  // untouched on failure
  ASSERT_TRUE(Dequantize(2, src.data(), 18, 32, dst.data()).ok());
  EXPECT_EQ(dst[0], 0.0f);  // d = 0
}

TEST(Quant, TypeTable) {
  ASSERT_TRUE(GgmlTypeInfo(12).has_value());
  EXPECT_EQ(GgmlTypeInfo(12)->block_size, 256);
  EXPECT_EQ(GgmlTypeInfo(12)->type_size, 144);
  EXPECT_EQ(GgmlTypeInfo(14)->type_size, 210);
  EXPECT_EQ(GgmlTypeInfo(8)->type_size, 34);
  EXPECT_FALSE(GgmlTypeInfo(4).has_value());  // removed Q4_2
  EXPECT_STREQ(GgmlTypeName(4), "type#4");
  EXPECT_STREQ(GgmlTypeName(30), "BF16");
  for (uint32_t t : {0u, 1u, 2u, 3u, 8u, 12u, 14u, 30u}) EXPECT_TRUE(IsDequantizable(t)) << t;
  EXPECT_FALSE(IsDequantizable(6));
}

TEST(Gguf, MetadataGetters) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto r = GgufFile::Open(dir + "/metadata.gguf");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const GgufFile& g = **r;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.GetString("general.architecture"), "llama");
  EXPECT_EQ(g.GetInt("t.u8"), 200);
  EXPECT_EQ(g.GetUint("t.u8"), 200u);
  EXPECT_EQ(g.GetInt("t.i8"), -100);
  EXPECT_EQ(g.GetUint("t.i8"), std::nullopt);
  EXPECT_EQ(g.GetInt("t.u16"), 60000);
  EXPECT_EQ(g.GetInt("t.i16"), -30000);
  EXPECT_EQ(g.GetUint("t.u32"), 4000000000u);
  EXPECT_EQ(g.GetInt("t.i32"), -2000000000);
  EXPECT_EQ(g.GetUint("t.u64"), (uint64_t{1} << 63) + 5);
  EXPECT_EQ(g.GetInt("t.u64"), std::nullopt);  // does not fit
  EXPECT_EQ(g.GetInt("t.i64"), -(int64_t{1} << 40));
  EXPECT_EQ(g.GetFloat("t.f32"), 0.25);
  EXPECT_EQ(g.GetFloat("t.f64"), -1.5);
  EXPECT_EQ(g.GetBool("t.bool"), true);
  EXPECT_EQ(g.GetString("t.str"), "h\xc3\xa9llo");
  EXPECT_EQ(g.GetIntArray("t.ints"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(g.GetFloatArray("t.floats"), (std::vector<double>{0.5, -1.25}));
  EXPECT_EQ(g.GetStringArray("t.strs"), (std::vector<std::string>{"a", "", "ccc"}));
  // Wrong type or missing key: nullopt, never a throw.
  EXPECT_EQ(g.GetString("t.u8"), std::nullopt);
  EXPECT_EQ(g.GetInt("t.str"), std::nullopt);
  EXPECT_EQ(g.GetBool("t.u8"), std::nullopt);
  EXPECT_EQ(g.GetFloat("t.bool"), std::nullopt);
  EXPECT_EQ(g.GetStringArray("t.ints"), std::nullopt);
  EXPECT_EQ(g.GetIntArray("t.strs"), std::nullopt);
  EXPECT_EQ(g.GetIntArray("t.floats"), std::nullopt);
  EXPECT_EQ(g.GetInt("no.such.key"), std::nullopt);
  EXPECT_FALSE(g.HasKey("no.such.key"));
  EXPECT_EQ(g.KeyType("t.strs"), GgufValueType::kArray);

  ASSERT_EQ(g.tensors().size(), 3u);
  const GgufTensorInfo* a = g.FindTensor("a");
  const GgufTensorInfo* b = g.FindTensor("b");
  const GgufTensorInfo* c = g.FindTensor("c");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{4, 32}));
  EXPECT_EQ(a->nbytes, 4u * 32 * 4);
  EXPECT_EQ(b->type, 2u);
  EXPECT_EQ(b->nbytes, 2u * 2 * 18);
  EXPECT_EQ(c->shape, (std::vector<int64_t>{1, 256}));
  EXPECT_EQ(c->nbytes, 210u);
  for (const auto* t : {a, b, c}) EXPECT_EQ(t->file_offset % g.alignment(), 0u) << t->name;
  EXPECT_EQ(g.FindTensor("zzz"), nullptr);
}

// One valid synthetic file, then each field corrupted in turn.
GgufBuilder ValidSynthetic() {
  GgufBuilder b;
  b.AddString("general.architecture", "llama");
  b.AddU32("general.alignment", 32);
  b.AddF32Tensor("w0", {8, 2}, 1.0f);
  b.AddF32Tensor("w1", {32}, -1.0f);
  return b;
}

StatusOr<std::unique_ptr<GgufFile>> OpenBytes(const std::string& dir, const std::string& name, const std::string& bytes) {
  const std::string path = dir + "/" + name;
  WriteFile(path, bytes);
  return GgufFile::Open(path);
}

TEST(Gguf, SyntheticBaselineIsValid) {
  const std::string dir = ScratchDir("gguf_valid");
  auto g = OpenBytes(dir, "ok.gguf", ValidSynthetic().Build());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  auto t = (*g)->LoadTensor(*(*g)->FindTensor("w0"));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->sizes().vec(), (std::vector<int64_t>{2, 8}));
  EXPECT_EQ(t->index({1, 0}).item<float>(), 9.0f);

  GgufBuilder v2 = ValidSynthetic();
  v2.version = 2;
  auto g2 = OpenBytes(dir, "v2.gguf", v2.Build());
  ASSERT_TRUE(g2.ok()) << g2.status().ToString();
  EXPECT_EQ((*g2)->version(), 2u);
  EXPECT_EQ((*g2)->tensors().size(), 2u);
}

TEST(Gguf, CorruptFieldsAreNamed) {
  const std::string dir = ScratchDir("gguf_corrupt");
  struct Case {
    const char* name;
    std::function<void(GgufBuilder&)> corrupt;
    StatusCode code;
    const char* needle;
  };
  const uint64_t kHuge = uint64_t{1} << 60;
  const std::vector<Case> cases = {
      {"magic", [](GgufBuilder& b) { b.magic = 0x46554746; }, StatusCode::kDataLoss, "bad magic"},
      {"v1", [](GgufBuilder& b) { b.version = 1; }, StatusCode::kUnimplemented, "version 1"},
      {"v4", [](GgufBuilder& b) { b.version = 4; }, StatusCode::kDataLoss, "version 4"},
      {"v0", [](GgufBuilder& b) { b.version = 0; }, StatusCode::kDataLoss, "version 0"},
      {"tensor_count", [&](GgufBuilder& b) { b.tensor_count = kHuge; }, StatusCode::kDataLoss, "tensor count"},
      {"tensor_count+1", [](GgufBuilder& b) { b.tensor_count = 3; }, StatusCode::kDataLoss, "tensor #2"},
      {"kv_count", [&](GgufBuilder& b) { b.kv_count = kHuge; }, StatusCode::kDataLoss, "metadata count"},
      {"kv_count+1", [](GgufBuilder& b) { b.kv_count = 3; }, StatusCode::kDataLoss, ""},
      {"key_len", [&](GgufBuilder& b) { b.kvs.push_back({"", 4, U32(1)}); }, StatusCode::kDataLoss, "key length"},
      {"str_len", [&](GgufBuilder& b) { b.kvs[0].raw_value = U64(kHuge) + "llama"; }, StatusCode::kDataLoss,
       "past end of file"},
      {"value_type", [](GgufBuilder& b) { b.kvs[0].type = 13; }, StatusCode::kDataLoss, "unknown value type 13"},
      {"array_count", [&](GgufBuilder& b) { b.kvs.push_back({"x.arr", 9, U32(5) + U64(kHuge) + U32(1)}); },
       StatusCode::kDataLoss, "array of"},
      {"array_elem", [](GgufBuilder& b) { b.kvs.push_back({"x.arr", 9, U32(77) + U64(1) + U32(1)}); },
       StatusCode::kDataLoss, "element type"},
      {"array_strings", [&](GgufBuilder& b) { b.kvs.push_back({"x.arr", 9, U32(8) + U64(2) + Str("a") + U64(kHuge)}); },
       StatusCode::kDataLoss, "x.arr"},
      {"nested_arrays", [](GgufBuilder& b) {
         std::string v = U32(9) + U64(1);
         for (int i = 0; i < 6; ++i) v += U32(9) + U64(1);
         b.kvs.push_back({"x.deep", 9, v + U32(4) + U64(0)});
       }, StatusCode::kDataLoss, "nested"},
      {"dup_key", [](GgufBuilder& b) { b.AddString("general.architecture", "x"); }, StatusCode::kDataLoss, "duplicate"},
      {"alignment", [](GgufBuilder& b) { b.kvs[1].raw_value = U32(3); }, StatusCode::kDataLoss, "alignment"},
      {"n_dims", [](GgufBuilder& b) { b.tensors[0].ne = {8, 2, 1, 1, 1}; }, StatusCode::kDataLoss, "5 dimensions"},
      {"dim_huge", [&](GgufBuilder& b) { b.tensors[0].ne = {8, kHuge}; }, StatusCode::kDataLoss, "'w0'"},
      {"dim_overflow", [](GgufBuilder& b) { b.tensors[0].ne = {uint64_t{1} << 40, uint64_t{1} << 40}; },
       StatusCode::kDataLoss, "impossible dimension"},
      {"dim_negative", [](GgufBuilder& b) { b.tensors[0].ne = {~uint64_t{0}}; }, StatusCode::kDataLoss, "impossible"},
      {"type", [](GgufBuilder& b) { b.tensors[0].type = 99; }, StatusCode::kDataLoss, "unknown ggml type id 99"},
      {"block", [](GgufBuilder& b) { b.tensors[1].type = 2; b.tensors[1].ne = {16}; }, StatusCode::kDataLoss, "block size"},
      {"misaligned", [](GgufBuilder& b) { b.tensors[1].offset += 4; }, StatusCode::kDataLoss, "alignment"},
      {"past_end", [](GgufBuilder& b) { b.tensors[1].offset += 64; }, StatusCode::kDataLoss,
       "tensor 'w1' data extends past end of file"},
      {"overlap", [](GgufBuilder& b) { b.tensors[1].offset = 32; }, StatusCode::kDataLoss, "overlaps"},
      {"dup_tensor", [](GgufBuilder& b) { b.tensors[1].name = "w0"; }, StatusCode::kDataLoss, "duplicate tensor"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    GgufBuilder b = ValidSynthetic();
    c.corrupt(b);
    const std::string file = std::string(c.name) + ".gguf";
    auto g = OpenBytes(dir, file, b.Build());
    ASSERT_FALSE(g.ok());
    EXPECT_EQ(g.status().code(), c.code) << g.status().ToString();
    EXPECT_TRUE(Contains(g.status().message(), c.needle)) << g.status().ToString();
    EXPECT_EQ(g.status().message().rfind(dir + "/" + file + ": ", 0), 0u) << g.status().ToString();
  }
}

TEST(Gguf, MissingEmptyAndDirectory) {
  const std::string dir = ScratchDir("gguf_missing");
  auto missing = GgufFile::Open(dir + "/nope.gguf");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(missing.status().message(), "nope.gguf"));
  auto empty = OpenBytes(dir, "empty.gguf", "");
  EXPECT_EQ(empty.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(empty.status().message(), "empty.gguf"));
  EXPECT_EQ(GgufFile::Open(dir).status().code(), StatusCode::kInvalidArgument);
}

TEST(Gguf, TruncatedAtManyCutPoints) {
  const std::string tiny = TinyDir();
  ASSERT_FALSE(tiny.empty());
  const std::string bytes = ReadFile(tiny + "/llama.gguf");
  auto full = GgufFile::Open(tiny + "/llama.gguf");
  ASSERT_TRUE(full.ok());
  uint64_t data_end = 0, data_start = bytes.size();
  for (const auto& t : (*full)->tensors()) {
    data_end = std::max(data_end, t.file_offset + t.nbytes);
    data_start = std::min(data_start, t.file_offset);
  }
  std::vector<size_t> cuts;
  for (size_t i = 0; i < 64; ++i) cuts.push_back(i);
  for (size_t i = 64; i < data_start; i += 53) cuts.push_back(i);
  for (size_t i = data_start; i < data_end; i += (data_end - data_start) / 40) cuts.push_back(i);
  cuts.push_back(data_end - 1);
  const std::string dir = ScratchDir("gguf_trunc");
  const std::string path = dir + "/cut.gguf";
  for (size_t cut : cuts) {
    SCOPED_TRACE(cut);
    auto g = OpenBytes(dir, "cut.gguf", bytes.substr(0, cut));
    ASSERT_FALSE(g.ok());
    EXPECT_EQ(g.status().code(), StatusCode::kDataLoss);
    EXPECT_EQ(g.status().message().rfind(path + ": ", 0), 0u) << g.status().ToString();
    auto m = LoadModel(path, at::kCPU, at::kFloat);
    EXPECT_FALSE(m.ok());
  }
  EXPECT_GT(cuts.size(), 100u);
}

// Random byte flips in the header must produce a Status or a usable file, never a crash; every
// accessor is exercised on the files that still parse.
TEST(Gguf, FuzzHeaderByteFlips) {
  const std::string tiny = TinyDir();
  ASSERT_FALSE(tiny.empty());
  const std::string seed = ReadFile(tiny + "/metadata.gguf");
  auto base = GgufFile::Open(tiny + "/metadata.gguf");
  ASSERT_TRUE(base.ok());
  const size_t header_end = (*base)->tensors().front().file_offset;
  const std::string dir = ScratchDir("gguf_fuzz");
  std::mt19937 rng(20240611);
  int parsed = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes = seed;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t pos = rng() % header_end;
      bytes[pos] = static_cast<char>(rng() % 3 == 0 ? bytes[pos] ^ (1 << (rng() % 8)) : rng() % 256);
    }
    auto g = OpenBytes(dir, "fuzz.gguf", bytes);
    if (!g.ok()) {
      EXPECT_TRUE(Contains(g.status().message(), "fuzz.gguf")) << g.status().ToString();
      continue;
    }
    ++parsed;
    for (const std::string& key : (*g)->Keys()) {
      (void)(*g)->GetInt(key);
      (void)(*g)->GetUint(key);
      (void)(*g)->GetFloat(key);
      (void)(*g)->GetBool(key);
      (void)(*g)->GetString(key);
      (void)(*g)->GetStringArray(key);
      (void)(*g)->GetIntArray(key);
      (void)(*g)->GetFloatArray(key);
    }
    for (const GgufTensorInfo& t : (*g)->tensors()) {
      if (t.numel() > (1 << 22)) continue;  // valid but large: not what this test is about
      auto loaded = (*g)->LoadTensor(t);
      if (loaded.ok()) {
        EXPECT_EQ(loaded->numel(), t.numel());
      }
    }
    (void)TokenizerSpecFromGguf(**g);
    (void)ConfigFromGguf(**g);
  }
  EXPECT_GT(parsed, 0);  // some flips land in string bytes and keep the file valid
}

TEST(Gguf, FuzzLoadModel) {
  const std::string tiny = TinyDir();
  ASSERT_FALSE(tiny.empty());
  const std::string seed = ReadFile(tiny + "/llama.gguf");
  auto base = GgufFile::Open(tiny + "/llama.gguf");
  ASSERT_TRUE(base.ok());
  size_t header_end = seed.size();
  for (const auto& t : (*base)->tensors()) header_end = std::min<size_t>(header_end, t.file_offset);
  const std::string dir = ScratchDir("gguf_fuzz_model");
  const std::string path = dir + "/fuzz.gguf";
  std::mt19937 rng(7);
  int loaded = 0;
  for (int iter = 0; iter < 150; ++iter) {
    std::string bytes = seed;
    for (int f = 0; f < 3; ++f) bytes[rng() % header_end] = static_cast<char>(rng() % 256);
    WriteFile(path, bytes);
    auto m = LoadModel(path, at::kCPU, at::kFloat);
    if (m.ok()) {
      ++loaded;
    } else {
      EXPECT_TRUE(Contains(m.status().message(), "fuzz.gguf")) << m.status().ToString();
    }
  }
  EXPECT_GT(loaded, 0);
}

}  // namespace
}  // namespace asl::model
