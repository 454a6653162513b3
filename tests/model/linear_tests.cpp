// The streaming linear kernel of decode steps (engine/model/linear.h) against at::linear.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "engine/model/linear.h"
#include "tests/cpu_isa_test_util.h"
#include "engine/model/quant.h"

#include <c10/util/Half.h>

#include <cstring>
#include <limits>
#include <random>

namespace asl::model {
namespace {

// Every instruction set the streaming kernel is built for (AVX2 + FMA + F16C, and the baseline).
template <typename F>
void ForEachCpuIsa(F fn) {
  testing::ForEachCpuIsa({CpuIsa::kAvx2, CpuIsa::kBaseline}, fn);
}

// Shapes with every tile remainder (M mod 4, N mod 2, groups of weight rows cut short), and K with
// and without a tail of fewer than 8 elements or fewer than four k-steps.
TEST(StreamingLinear, MatchesAtLinear) {
  ForEachCpuIsa([] {
  at::manual_seed(3);
  for (int64_t K : {1, 7, 64, 576, 581}) {
    for (int64_t N : {1, 5, 6, 7, 64, 130}) {
      for (int64_t M : {1, 2, 3, 8, 33}) {
        SCOPED_TRACE("M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
        const at::Tensor x = at::randn({M, K}), w = at::randn({N, K}), b = at::randn({N});
        const at::Tensor want = at::linear(x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble)).to(at::kFloat);
        const at::Tensor got = StreamingLinear(x, w, b);
        ASSERT_EQ(got.sizes(), want.sizes());
        EXPECT_TRUE(at::allclose(got, want, 1e-4, 1e-4)) << (got - want).abs().max().item<float>();
        const at::Tensor no_bias = StreamingLinear(x, w);
        EXPECT_TRUE(at::allclose(no_bias, want - b, 1e-4, 1e-4));
      }
    }
  }
  });
}

// A row's result is bit-identical whatever rows it is computed with and however many threads run:
// a decode step does not depend on its batch-mates.
TEST(StreamingLinear, EachRowIndependentOfTheBatch) {
  ForEachCpuIsa([] {
  at::manual_seed(4);
  const at::Tensor x = at::randn({9, 576}), w = at::randn({1537, 576}), b = at::randn({1537});
  const at::Tensor all = StreamingLinear(x, w, b);
  const int threads = at::get_num_threads();
  for (int t : {1, 2, 3}) {
    at::set_num_threads(t);
    for (int64_t m = 0; m < x.size(0); ++m) {
      const at::Tensor alone = StreamingLinear(x.narrow(0, m, 1), w, b);
      EXPECT_TRUE(at::equal(alone[0], all[m])) << "row " << m << " threads " << t;
    }
    EXPECT_TRUE(at::equal(StreamingLinear(x.narrow(0, 2, 5), w, b), all.narrow(0, 2, 5)));
  }
  at::set_num_threads(threads);
  });
}

// Random GGUF blocks of `type` (finite scales), rows x cols, as a PackedWeight.
PackedWeight RandomPacked(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  PackedWeight p;
  p.type = static_cast<uint32_t>(type);
  p.cols = cols;
  const int64_t row_bytes = PackedRowBytes(p.type, cols);
  const int64_t block_bytes = row_bytes / (cols / 32);
  p.bytes = at::empty({rows, row_bytes}, at::kByte);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  uint8_t* b = p.bytes.data_ptr<uint8_t>();
  for (int64_t i = 0; i < p.bytes.numel(); ++i) b[i] = static_cast<uint8_t>(byte(rng));
  const int halves = type == GgmlType::kQ4_1 ? 2 : 1;  // d (and m) lead each block
  for (int64_t blk = 0; blk < rows * cols / 32; ++blk) {
    for (int h = 0; h < halves; ++h) {
      const uint16_t bits = c10::Half(scale(rng)).x;
      std::memcpy(b + blk * block_bytes + 2 * h, &bits, 2);
    }
  }
  return p;
}

at::Tensor Dequantized(const PackedWeight& p) {
  at::Tensor w = at::empty({p.bytes.size(0), p.cols}, at::kFloat);
  const Status st = Dequantize(p.type, p.bytes.data_ptr<uint8_t>(), p.bytes.numel(), w.numel(), w.data_ptr<float>());
  EXPECT_TRUE(st.ok()) << st.ToString();
  return w;
}

// Packed weights are decoded to exactly Dequantize's floats and then computed like float weights:
// the result is bit-identical to the float kernel on the dequantised matrix, for every block type.
TEST(StreamingLinear, PackedEqualsFloatOnDequantisedWeights) {
  ForEachCpuIsa([] {
  at::manual_seed(6);
  uint32_t seed = 1;
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1}) {
    for (int64_t cols : {32, 576, 1536}) {
      for (int64_t rows : {1, 7, 192}) {
        const PackedWeight p = RandomPacked(type, rows, cols, seed++);
        const at::Tensor w = Dequantized(p);
        for (int64_t M : {1, 2, 5, 16}) {
          SCOPED_TRACE(std::string(GgmlTypeName(p.type)) + " " + std::to_string(rows) + "x" + std::to_string(cols) +
                       " M=" + std::to_string(M));
          const at::Tensor x = at::randn({M, cols}), b = at::randn({rows});
          const at::Tensor got = StreamingLinear(x, p, b);
          EXPECT_TRUE(at::equal(got, StreamingLinear(x, w, b)));
          EXPECT_TRUE(at::allclose(got, at::linear(x, w, b), 1e-4, 1e-4));
        }
      }
    }
  }
  });
  EXPECT_THROW(PackedRowBytes(static_cast<uint32_t>(GgmlType::kQ4_K), 256), c10::Error);
  EXPECT_THROW(PackedRowBytes(static_cast<uint32_t>(GgmlType::kQ8_0), 33), c10::Error);
  EXPECT_EQ(PackedRowBytes(static_cast<uint32_t>(GgmlType::kQ4_1), 576), 18 * 20);
}

// Linear() takes the kernel for per-sequence rows over packed weights, at::linear for everything
// else, with the same maths; the number of rows never changes the kernel.
TEST(StreamingLinear, LinearDispatchesByKindOfRows) {
  at::manual_seed(5);
  const at::Tensor w = at::randn({40, 24}), b = at::randn({40});
  for (Rows rows : {Rows::kTokens, Rows::kPerSequence}) {
    for (int64_t M : {1, 32, 33, 100}) {
      const at::Tensor x = at::randn({M, 24});  // no packed copy: at::linear
      EXPECT_TRUE(at::equal(Linear(x, w, b, {}, rows), at::linear(x, w, b))) << M;
    }
  }
  const at::Tensor xd = at::randn({2, 24}, at::kDouble);
  EXPECT_TRUE(at::allclose(Linear(xd, w.to(at::kDouble), b.to(at::kDouble), {}, Rows::kPerSequence),
                           at::linear(xd, w.to(at::kDouble), b.to(at::kDouble))));
  const at::Tensor x3 = at::randn({2, 3, 24});  // not [M, K]: at::linear's broadcasting
  EXPECT_EQ(Linear(x3, w, b, {}, Rows::kTokens).sizes(), (std::vector<int64_t>{2, 3, 40}));
  const PackedWeight p = RandomPacked(GgmlType::kQ4_1, 40, 64, 9);
  const at::Tensor wp = Dequantized(p);
  for (int64_t M : {1, 2, 3, 32, 33, 100}) {
    const at::Tensor x = at::randn({M, 64});
    EXPECT_TRUE(at::equal(Linear(x, wp, b, p, Rows::kPerSequence), StreamingLinear(x, wp, b))) << M;
    EXPECT_TRUE(at::equal(Linear(x, wp, b, p, Rows::kTokens), at::linear(x, wp, b))) << M;
  }
  // A bfloat16 run's per-sequence rows: widened to float32, computed from the blocks, narrowed back.
  for (int64_t M : {1, 3}) {
    const at::Tensor x = at::randn({M, 64}).to(at::kBFloat16);
    const at::Tensor got = Linear(x, wp.to(at::kBFloat16), b.to(at::kBFloat16), p, Rows::kPerSequence);
    EXPECT_EQ(got.scalar_type(), at::kBFloat16);
    EXPECT_TRUE(at::equal(got, StreamingLinear(x.to(at::kFloat), wp, b.to(at::kBFloat16).to(at::kFloat))
                                   .to(at::kBFloat16)))
        << M;
  }
  // A double-precision run keeps at::linear even for per-sequence rows over packed weights.
  const at::Tensor xd64 = at::randn({2, 64}, at::kDouble), wd64 = wp.to(at::kDouble);
  EXPECT_TRUE(at::equal(Linear(xd64, wd64, {}, p, Rows::kPerSequence), at::linear(xd64, wd64)));
  EXPECT_THROW(StreamingLinear(at::randn({2, 23}), w), c10::Error);
  EXPECT_THROW(StreamingLinear(at::randn({2, 63}), p), c10::Error);
  EXPECT_EQ(StreamingLinear(at::randn({0, 24}), w).sizes(), (std::vector<int64_t>{0, 40}));
}

// Int8 activations (linear_int8_kernel.h): every instruction set the int8 kernel is built for.
template <typename F>
void ForEachInt8Isa(F fn) {
  testing::ForEachCpuIsa({CpuIsa::kAvx512Vnni, CpuIsa::kAvx2, CpuIsa::kBaseline}, fn);
}

// The int8 result against the exact product in double: each activation is rounded to a multiple of
// its block's d = max|x| / 127, by at most d / 2, so |y - exact| <= sum_j |w_j| * d_j / 2 (plus float
// rounding of the sums); the integer dot products themselves are exact.
void ExpectWithinInt8Bound(const at::Tensor& got, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const at::Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble);
  const int64_t M = x.size(0), K = x.size(1);
  const at::Tensor d = std::get<0>(xd.abs().view({M, K / 32, 32}).max(2)) / 127.0;  // [M, K/32]
  const at::Tensor half_step = d.repeat_interleave(32, 1) / 2.0;                        // [M, K]
  const at::Tensor bound = at::matmul(half_step, wd.abs().t());                          // [M, N]
  const at::Tensor exact = at::linear(xd, wd, b.defined() ? b.to(at::kDouble) : b);
  const at::Tensor slack = 1e-5 * (at::matmul(xd.abs(), wd.abs().t()) + 1.0);
  const at::Tensor excess = (got.to(at::kDouble) - exact).abs() - bound - slack;
  EXPECT_LE(excess.max().item<double>(), 0.0) << "int8 error beyond the rounding bound";
}

// Every block type, shapes with every row-tile remainder and an odd number of blocks: within the
// activations' rounding of the exact product, and bit-identical on every instruction set.
TEST(StreamingLinearInt8, WithinRoundingBoundAndIdenticalOnEveryIsa) {
  at::manual_seed(11);
  uint32_t seed = 100;
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1}) {
    for (int64_t cols : {32, 96, 576, 1536}) {
      for (int64_t rows : {1, 7, 130}) {
        const PackedWeight p = RandomPacked(type, rows, cols, seed++);
        const at::Tensor w = Dequantized(p);
        for (int64_t M : {1, 2, 3, 4, 5, 9}) {
          SCOPED_TRACE(std::string(GgmlTypeName(p.type)) + " " + std::to_string(rows) + "x" + std::to_string(cols) +
                       " M=" + std::to_string(M));
          const at::Tensor x = at::randn({M, cols}) * at::rand({M, 1}) * 4, b = at::randn({rows});
          at::Tensor first;
          ForEachInt8Isa([&] {
            const at::Tensor got = StreamingLinear(x, p, b, Activations::kInt8);
            ExpectWithinInt8Bound(got, x, w, b);
            if (!first.defined()) first = got;
            EXPECT_TRUE(at::equal(got, first)) << "differs from " << CpuIsaName(CpuIsa::kAvx512Vnni) << " or the first";
          });
        }
      }
    }
  }
}

// A row's int8 result is bit-identical whatever rows it is computed with and however many threads
// run, as with float32 activations.
TEST(StreamingLinearInt8, EachRowIndependentOfTheBatch) {
  ForEachInt8Isa([] {
    at::manual_seed(12);
    const PackedWeight p = RandomPacked(GgmlType::kQ4_1, 1537, 576, 77);
    const at::Tensor x = at::randn({9, 576}), b = at::randn({1537});
    const at::Tensor all = StreamingLinear(x, p, b, Activations::kInt8);
    const int threads = at::get_num_threads();
    for (int t : {1, 2, 3}) {
      at::set_num_threads(t);
      for (int64_t m = 0; m < x.size(0); ++m) {
        EXPECT_TRUE(at::equal(StreamingLinear(x.narrow(0, m, 1), p, b, Activations::kInt8)[0], all[m]))
            << "row " << m << " threads " << t;
      }
      EXPECT_TRUE(at::equal(StreamingLinear(x.narrow(0, 2, 5), p, b, Activations::kInt8), all.narrow(0, 2, 5)));
    }
    at::set_num_threads(threads);
  });
}

// Edge inputs: an all-zero block contributes exactly nothing, a block's largest value is exact
// (q = +-127), and a non-finite activation makes its outputs NaN instead of vanishing.
TEST(StreamingLinearInt8, ZeroBlocksExactValuesAndNonFinite) {
  ForEachInt8Isa([] {
    const PackedWeight p = RandomPacked(GgmlType::kQ8_0, 3, 64, 5);
    const at::Tensor w = Dequantized(p);
    at::Tensor x = at::zeros({2, 64});
    EXPECT_TRUE(at::equal(StreamingLinear(x, p, {}, Activations::kInt8), at::zeros({2, 3})));
    x[0][5] = 2.5f;  // the block's only value: q = 127, d = 2.5 / 127, exact up to float rounding
    const at::Tensor got = StreamingLinear(x, p, {}, Activations::kInt8);
    EXPECT_TRUE(at::allclose(got[0], 2.5f * w.select(1, 5), 1e-6, 1e-6));
    EXPECT_TRUE(at::equal(got[1], at::zeros({3})));
    x[1][40] = std::numeric_limits<float>::infinity();
    x[0][0] = std::numeric_limits<float>::quiet_NaN();
    const at::Tensor bad = StreamingLinear(x, p, {}, Activations::kInt8);
    EXPECT_TRUE(bad.isnan().all().item<bool>()) << bad;
  });
}

TEST(StreamingLinearInt8, LinearPassesTheArithmeticThrough) {
  const PackedWeight p = RandomPacked(GgmlType::kQ4_0, 40, 64, 9);
  const at::Tensor wp = Dequantized(p), b = at::randn({40});
  for (int64_t M : {1, 3}) {
    const at::Tensor x = at::randn({M, 64});
    const at::Tensor int8 = StreamingLinear(x, p, b, Activations::kInt8);
    EXPECT_TRUE(at::equal(Linear(x, wp, b, p, Rows::kPerSequence, Activations::kInt8), int8));
    EXPECT_FALSE(at::equal(int8, StreamingLinear(x, p, b)));  // not the float32 arithmetic
    // Prompt rows keep at::linear whatever the activations setting.
    EXPECT_TRUE(at::equal(Linear(x, wp, b, p, Rows::kTokens, Activations::kInt8), at::linear(x, wp, b)));
    const at::Tensor xb = x.to(at::kBFloat16);
    EXPECT_TRUE(at::equal(Linear(xb, wp.to(at::kBFloat16), b.to(at::kBFloat16), p, Rows::kPerSequence, Activations::kInt8),
                          StreamingLinear(xb.to(at::kFloat), p, b.to(at::kBFloat16).to(at::kFloat), Activations::kInt8)
                              .to(at::kBFloat16)));
  }
  Activations a = Activations::kFloat32;
  EXPECT_TRUE(ParseActivations("int8", &a));
  EXPECT_EQ(a, Activations::kInt8);
  EXPECT_STREQ(ActivationsName(a), "int8");
  EXPECT_FALSE(ParseActivations("q8", &a));
}

}  // namespace
}  // namespace asl::model
